"""CLIPScoreCallback: CLIP score of samples against their captions during training.

Prompts are the given list, or else the first ``num_images`` captions of the validation loader.
Every rank samples (FSDP-safe) and updates its CLIP metric; torchmetrics syncs the sums across
ranks, so every rank gets the same value and rank 0 logs it as ``val/clip_score``. The CLIP
network lives in the callback, never inside the (possibly sharded) module.
"""

from __future__ import annotations

import lightning as L

from ..evaluation.clip import clip_score_update, make_clip_score
from ..sampling import SamplingSettings
from .periodic import ImageCallback, publish_metrics, val_loader


class CLIPScoreCallback(ImageCallback):
    def __init__(self, model: str, prompts: list[str] | None = None, num_images: int = 64,
                 every_n_steps: int = 1000, on_fit_end: bool = True, sampling: SamplingSettings | None = None,
                 batch_size: int = 32, strict: bool = False):
        """``model``: a local folder or hub id of a Hugging Face CLIP (e.g. a save_pretrained() of
        openai/clip-vit-large-patch14). If it cannot be loaded, the callback says so once and the
        run goes on without it — or, with ``strict=True``, the run refuses to start."""
        super().__init__(every_n_steps, on_fit_end, sampling, batch_size)
        self.model, self.prompts, self.num_images, self.strict = model, prompts, num_images, strict
        self.metric = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.metric is not None or self.off_because is not None or stage != "fit":
            return
        try:
            self.metric = make_clip_score(self.model)
        except OSError as err:
            if self.strict:
                raise
            self.switch_off(str(err))

    def _captions(self, trainer: L.Trainer) -> list[str]:
        if self.prompts is None:
            self.prompts = []
            for batch in val_loader(trainer, type(self).__name__) or []:
                self.prompts += list(batch["caption"])[: self.num_images - len(self.prompts)]
                if len(self.prompts) >= self.num_images:
                    break
            if not self.prompts:
                self.switch_off("no prompts given and no validation captions found")
        return self.prompts

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        prompts = self._captions(trainer)
        if not prompts:
            return None
        images = self.prompt_images(pl_module, prompts)
        if self.off_because is not None:
            return None
        metric = self.metric.to(pl_module.device)
        metric.reset()
        for start in range(0, len(prompts), self.batch_size):
            clip_score_update(metric, images[start : start + self.batch_size], prompts[start : start + self.batch_size])
        value = float(metric.compute())
        publish_metrics(trainer, {"val/clip_score": value}, trainer.global_step)
        return value
