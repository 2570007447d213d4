"""FIDCallback: FID of samples against validation images, every N steps and at the end of fit.

Real images and their captions come from the datamodule's validation loader (the first
``num_images``); their feature statistics are computed once. Fakes are sampled for the
same captions with ``pl_module.log_images`` on every rank (FSDP-safe); rank 0 computes
FID and broadcasts it. The feature net lives in the callback, never inside the sharded
module (mixed Tensor/DTensor errors otherwise).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from fluid_lightning.evaluation.fid import TorchScriptFeatures, make_fid

from .periodic import PeriodicCallback, publish_metrics, val_loader


class FIDCallback(PeriodicCallback):
    def __init__(self, feature: nn.Module | None = None, feature_weights: str | None = None, strict: bool = False,
                 num_images: int = 256, every_n_steps: int = 1000, on_fit_end: bool = True, batch_size: int = 64,
                 num_steps: int = 32, cfg: float = 3.0, temperature: float = 1.0, seed: int = 0, name: str = "fid"):
        """``feature``: see `make_fid` (default: the offline `TinyConvFeatures`, fine for trends,
        not comparable with published FIDs). ``feature_weights``: instead, the path of a TorchScript
        FID Inception (`TorchScriptFeatures`); if it cannot be loaded the callback says so once and
        the run goes on without FID — or, with ``strict=True``, refuses to start. Logged as
        ``val/<name>``."""
        super().__init__(every_n_steps, on_fit_end)
        self.feature, self.feature_weights, self.strict = feature, feature_weights, strict
        self.num_images, self.batch_size, self.name = num_images, batch_size, name
        self.sample_kwargs = {"num_steps": num_steps, "cfg": cfg, "temperature": temperature}
        self.seed = seed
        self.metric = None
        self.captions: list[str] | None = None
        self._disabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.feature_weights is None or self.feature is not None or self._disabled:
            return
        try:
            self.feature = TorchScriptFeatures(self.feature_weights, call_kwargs={"return_features": True})
        except FileNotFoundError as err:
            if self.strict:
                raise
            rank_zero_warn(f"FIDCallback is off: {err}. Training continues without FID.")
            self._disabled = True

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self._disabled:
            return False
        if self.captions is not None:
            return True
        loader = val_loader(trainer, type(self).__name__)
        if loader is None or not hasattr(pl_module, "log_images"):
            rank_zero_warn("FIDCallback is off: it needs a datamodule with val_dataloader() and a module with "
                           "log_images(prompts, ...). Training continues without FID.")
            self._disabled = True
            return False
        self.metric = make_fid(self.feature).to(pl_module.device)
        self.captions = []
        for batch in loader:
            images = batch["image"][: self.num_images - len(self.captions)]
            self.metric.update(((images.to(pl_module.device).float() + 1) / 2).clamp(0, 1), real=True)
            self.captions += list(batch["caption"][: len(images)])
            if len(self.captions) >= self.num_images:
                break
        if len(self.captions) < 2:
            rank_zero_warn("FIDCallback is off: the validation loader gave fewer than 2 images.")
            self._disabled = True
            return False
        return True

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        if not self._prepare(trainer, pl_module):
            return None
        step = trainer.global_step
        self.metric.reset()  # fakes only: reset_real_features=False keeps the real statistics
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        for start in range(0, len(self.captions), self.batch_size):
            images = pl_module.log_images(self.captions[start:start + self.batch_size], generator=generator,
                                          **self.sample_kwargs)
            self.metric.update(images.to(pl_module.device), real=False)
        value = float(self.metric.compute()) if trainer.is_global_zero else None
        value = trainer.strategy.broadcast(value, src=0)
        publish_metrics(trainer, {f"val/{self.name}": value}, step)
        return value

