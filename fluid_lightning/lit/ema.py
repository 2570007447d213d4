"""The EMA copy both LightningModules keep: float32 whatever the training precision (see lit/base.py)."""

from __future__ import annotations

import copy

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
