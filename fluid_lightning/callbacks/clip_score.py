"""CLIPScoreCallback: CLIP score of samples against their captions during training.

Prompts are the given list, or else the first ``num_images`` captions of the validation loader.
Every rank samples (FSDP-safe) and updates its CLIP metric; torchmetrics syncs the sums across
ranks, so every rank gets the same value and rank 0 logs it as ``val/clip_score``. The CLIP
network lives in the callback, never inside the (possibly sharded) module.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from fluid_lightning.evaluation.clip import clip_score_update, make_clip_score

from .periodic import PeriodicCallback, publish_metrics, val_loader


class CLIPScoreCallback(PeriodicCallback):
    def __init__(self, model: str, prompts: list[str] | None = None, num_images: int = 64,
                 every_n_steps: int = 1000, on_fit_end: bool = True, batch_size: int = 32, num_steps: int = 32,
                 cfg: float = 3.0, temperature: float = 1.0, seed: int = 0, strict: bool = False):
        """``model``: a local folder or hub id of a Hugging Face CLIP (e.g. a save_pretrained() of
        openai/clip-vit-large-patch14). If it cannot be loaded, the callback says so once and the
        run goes on without it — or, with ``strict=True``, the run refuses to start."""
        super().__init__(every_n_steps, on_fit_end)
        self.model, self.prompts, self.num_images = model, prompts, num_images
        self.batch_size, self.seed, self.strict = batch_size, seed, strict
        self.sample_kwargs = {"num_steps": num_steps, "cfg": cfg, "temperature": temperature}
        self.metric = None
        self._disabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.metric is not None or self._disabled or stage != "fit":
            return
        try:
            self.metric = make_clip_score(self.model)
        except OSError as err:
            if self.strict:
                raise
            rank_zero_warn(f"CLIPScoreCallback is off: {err}. Training continues without CLIP score.")
            self._disabled = True

    def _captions(self, trainer: L.Trainer) -> list[str]:
        if self.prompts is None:
            self.prompts = []
            for batch in val_loader(trainer, type(self).__name__) or []:
                self.prompts += list(batch["caption"])[: self.num_images - len(self.prompts)]
                if len(self.prompts) >= self.num_images:
                    break
            if not self.prompts:
                rank_zero_warn("CLIPScoreCallback is off: no prompts given and no validation captions found.")
                self._disabled = True
        return self.prompts

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        if self._disabled or not self._captions(trainer):
            return None
        metric = self.metric.to(pl_module.device)
        metric.reset()
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        for start in range(0, len(self.prompts), self.batch_size):
            prompts = self.prompts[start : start + self.batch_size]
            images = pl_module.log_images(prompts, generator=generator, **self.sample_kwargs)
            clip_score_update(metric, images, prompts)
        value = float(metric.compute())
        publish_metrics(trainer, {"val/clip_score": value}, trainer.global_step)
        return value
