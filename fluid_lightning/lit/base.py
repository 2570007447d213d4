"""What both LightningModules share: a float32 EMA copy that casts do not touch, and a config that
rebuilds the module when it is loaded back (``from_config``; ``checkpointing.load`` calls it).

The EMA moves by (1 - decay) = 1e-4 of its distance to the weights each step, far below bfloat16's
rounding (2⁻⁸ relative): a bf16 EMA stops moving once the decay has warmed up. Lightning's bf16-true
casts the whole module to bf16, so ``to`` moves the EMA without casting it; sampling and validation
then run the EMA in float32, with their inputs cast to it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import instantiate_module
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters, _given_hyperparameters_context


class ModuleBase(L.LightningModule):
    """Subclasses name their nn.Module arguments in ``SUBMODULES`` and may keep ``self.ema`` (or None)."""

    SUBMODULES: tuple[str, ...] = ()

    def unsaved_arguments(self) -> list[str] | None:
        """What ``save_hyperparameters`` leaves out. Built from a config (LightningCLI or ``from_config``),
        the hyper-parameters are that config (plain dicts), which rebuilds the model on load; built from
        objects, the submodules are left out (they would be pickled into the checkpoint)."""
        return None if _given_hyperparameters.get() is not None else list(self.SUBMODULES)

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """Build from the ``model.init_args`` part of a YAML config (class_path dicts inside), so that its
        checkpoints load back like CLI-made ones."""
        config = {k: v for k, v in config.items() if k not in ("_class_path", "_instantiator")}
        hparams = {"_class_path": f"{cls.__module__}.{cls.__qualname__}", **config}
        with _given_hyperparameters_context(hparams=hparams, instantiator="lightning.pytorch.cli.instantiate_module"):
            return instantiate_module(cls, hparams)

    def to(self, *args: Any, **kwargs: Any):
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        ema = self._modules.get("ema")
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

