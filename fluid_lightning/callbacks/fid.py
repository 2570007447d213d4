"""FIDCallback: FID of samples against validation images, every N steps and at the end of fit.

Real images and their captions come from the datamodule's validation loader (the first
``num_images``); their feature statistics are computed once. Fakes are sampled for the same captions
on every rank (FSDP-safe); rank 0 computes FID and broadcasts it. The feature net lives in the
callback, never inside the sharded module (mixed Tensor/DTensor errors otherwise).
"""

from __future__ import annotations

import lightning as L
from torch import nn

from ..data.pixels import images_to_float
from ..evaluation.fid import TorchScriptFeatures, make_fid
from ..sampling import SamplingSettings
from .periodic import ImageCallback, publish_metrics, val_loader


class FIDCallback(ImageCallback):
    def __init__(self, feature: nn.Module | None = None, feature_weights: str | None = None, strict: bool = False,
                 num_images: int = 256, every_n_steps: int = 1000, on_fit_end: bool = True,
                 sampling: SamplingSettings | None = None, batch_size: int = 64, name: str = "fid"):
        """``feature``: see `make_fid` (default: the offline `TinyConvFeatures`, fine for trends,
        not comparable with published FIDs). ``feature_weights``: instead, the path of a TorchScript
        FID Inception (`TorchScriptFeatures`); if it cannot be loaded the callback says so once and
        the run goes on without FID — or, with ``strict=True``, refuses to start. Logged as
        ``val/<name>``."""
        super().__init__(every_n_steps, on_fit_end, sampling, batch_size)
        self.feature, self.feature_weights, self.strict = feature, feature_weights, strict
        self.num_images, self.name = num_images, name
        self.metric = None
        self.captions: list[str] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.feature_weights is None or self.feature is not None or self.off_because is not None:
            return
        try:
            self.feature = TorchScriptFeatures(self.feature_weights, call_kwargs={"return_features": True})
        except FileNotFoundError as err:
            if self.strict:
                raise
            self.switch_off(str(err))

    def _real_statistics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self.captions is not None:
            return True
        loader = val_loader(trainer, type(self).__name__)
        if loader is None:
            self.switch_off("it needs a datamodule with val_dataloader()")
            return False
        self.metric = make_fid(self.feature).to(pl_module.device)
        self.captions = []
        for batch in loader:
            images = batch["image"][: self.num_images - len(self.captions)]
            images = images_to_float(images.to(pl_module.device)).float()  # uint8 pixels or [-1, 1]
            self.metric.update(((images + 1) / 2).clamp(0, 1), real=True)
            self.captions += list(batch["caption"][: len(images)])
            if len(self.captions) >= self.num_images:
                break
        if len(self.captions) < 2:
            self.switch_off("the validation loader gave fewer than 2 images")
            return False
        return True

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        if not self._real_statistics(trainer, pl_module):
            return None
        self.metric.reset()  # fakes only: reset_real_features=False keeps the real statistics
        fakes = self.prompt_images(pl_module, self.captions)
        if self.off_because is not None:
            return None
        self.metric.update(fakes.to(pl_module.device), real=False)
        value = float(self.metric.compute()) if trainer.is_global_zero else None
        value = trainer.strategy.broadcast(value, src=0)
        publish_metrics(trainer, {f"val/{self.name}": value}, trainer.global_step)
        return value
