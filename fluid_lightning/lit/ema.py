"""The EMA copy that both LightningModules keep: its update, and its float32 storage.

The EMA moves by (1 - decay) = 1e-4 of its distance to the weights each step, far below bfloat16's
rounding (2⁻⁸ relative): a bf16 EMA stops moving once the decay has warmed up. Lightning's bf16-true
casts the whole module to bf16, so ``Float32EMA.to`` moves the EMA without casting it; sampling and
validation then run the EMA in float32, with their inputs cast to it (``dtype_of``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen float32 copy of ``module``."""
    return copy.deepcopy(module).float().requires_grad_(False).eval()


@torch.no_grad()
def update_ema(ema: nn.Module, live: nn.Module, step: int, max_decay: float) -> None:
    """ema ← decay·ema + (1 - decay)·live with decay = min(max_decay, (1+t)/(10+t)) (a warm-up, so short
    runs still get a useful average); buffers are copied."""
    decay = min(max_decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    live_params = [p.detach().to(e.dtype) for e, p in zip(ema_params, live.parameters())]
    torch._foreach_lerp_(ema_params, live_params, 1 - decay)
    for e, b in zip(ema.buffers(), live.buffers()):
        e.copy_(b)


class Float32EMA:
    """Mixin for a LightningModule with an ``ema`` submodule (or ``None``): ``to`` with a dtype casts
    everything but the EMA, which only moves device."""

    def to(self, *args: Any, **kwargs: Any):
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        ema = self.ema
        if ema is None or dtype is None:
            return super().to(*args, **kwargs)
        self._modules["ema"] = None  # (not popped: the module order, hence the state dict order, stays)
        try:
            super().to(*args, **kwargs)
        finally:
            self._modules["ema"] = ema
        if device is not None:
            ema.to(device)
        return self


def dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype of the module's weights (float32 for weightless ones such as pixel patches)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
