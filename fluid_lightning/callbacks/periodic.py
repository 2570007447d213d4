"""The shared *when* of the evaluation callbacks, and the one image contract with the modules.

``PeriodicCallback``: runs every N optimizer steps and at the end of fit, says when it starts and how
long it took, and switches itself off with one warning when it cannot work (training goes on).

``ImageCallback``: asks the module for images through ``pl_module.log_images(batch, sampling, rng)``,
which returns named tensors [B, 3, H, W] in [0, 1] (``GeneratorModule``: {"samples"} for
``batch["caption"]``; ``TokenizerModule``: {"inputs", "reconstructions"} for ``batch["image"]``). It
owns the batch loop, with one random stream seeded by ``sampling.seed`` through all batches, so every
evaluation sees the same noise and a change in the images is a change in the model.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from ..sampling import SamplingSettings


class PeriodicCallback(L.Callback):
    """Calls ``run(trainer, pl_module)`` every ``every_n_steps`` optimizer steps (0 = never during
    training) and, if ``on_fit_end``, once more at the end of fit unless that step was just done.
    ``global_step`` counts optimizer steps, so with gradient accumulation the batch hook sees a step
    several times: it runs once. The final run is Lightning's ``on_train_end``, not ``on_fit_end``:
    by ``on_fit_end`` a single-device strategy has moved the model back to the CPU, and a GPU run's
    last grid, FID and shapes scores would be sampled there."""

    def __init__(self, every_n_steps: int, on_fit_end: bool):
        self.every_n_steps, self.at_fit_end = every_n_steps, on_fit_end
        self._last_step = -1
        self.off_because: str | None = None

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        raise NotImplementedError

    def switch_off(self, why: str) -> None:
        """Stop running, with one warning naming why; training goes on."""
        if self.off_because is None:
            rank_zero_warn(f"{type(self).__name__} is off: {why}. Training continues without it.")
        self.off_because = why

    def _run_once(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        if self.off_because is not None:
            return
        name, start = type(self).__name__, time.perf_counter()
        rank_zero_info(f"{name}: running at step {trainer.global_step} ...")  # else a silent pause of up to minutes
        self.run(trainer, pl_module)
        if self.off_because is None:
            rank_zero_info(f"{name}: done in {time.perf_counter() - start:.1f} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run_once(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step:
            self._run_once(trainer, pl_module)


class ImageCallback(PeriodicCallback):
    """A periodic callback that gets its images from ``pl_module.log_images``. ``sampling``: how a
    generator samples (None: the module's own settings); ``batch_size``: images per call."""

    def __init__(self, every_n_steps: int, on_fit_end: bool, sampling: SamplingSettings | None = None,
                 batch_size: int = 64):
        super().__init__(every_n_steps, on_fit_end)
        self.sampling, self.batch_size = sampling, batch_size

    def images(self, pl_module: L.LightningModule, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``log_images`` over ``batch`` (lists or tensors along the first dimension) in chunks of
        ``batch_size``, outputs concatenated. Every rank must call it (under FSDP sampling is a collective)."""
        if not callable(getattr(pl_module, "log_images", None)):
            self.switch_off(f"{type(pl_module).__name__} has no log_images(batch, sampling, rng)")
            return {}
        sampling = self.sampling or getattr(pl_module, "sampling", None) or SamplingSettings()
        rng = sampling.rng(pl_module.device)
        size = len(next(iter(batch.values())))
        outputs: dict[str, list[Tensor]] = {}
        for start in range(0, size, self.batch_size):
            chunk = {key: value[start : start + self.batch_size] for key, value in batch.items()}
            for key, images in pl_module.log_images(chunk, sampling=sampling, rng=rng).items():
                outputs.setdefault(key, []).append(images.float().cpu())
        return {key: torch.cat(parts) for key, parts in outputs.items()}

    def prompt_images(self, pl_module: L.LightningModule, prompts: list[str]) -> Tensor:
        """Samples [B, 3, H, W] in [0, 1] for the prompts (a generator's ``log_images``)."""
        return self.images(pl_module, {"caption": list(prompts)}).get("samples", torch.empty(0, 3, 1, 1))


def publish_metrics(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Make rank-0 values visible on every rank (callback_metrics, e.g. for ModelCheckpoint) and log
    them once. ``metrics`` must already agree across ranks (broadcast first)."""
    for name, value in metrics.items():
        trainer.callback_metrics[name] = torch.tensor(value)
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


def val_loader(trainer: L.Trainer, who: str):
    """The datamodule's validation loader (real images and captions for metrics), or None with a
    warning when there is none: the callback then turns itself off and training goes on."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "val_dataloader"):
        return None
    try:
        return datamodule.val_dataloader()
    except Exception as err:  # a datamodule without validation data: say so, keep training
        rank_zero_warn(f"{who}: val_dataloader() failed ({err})")
        return None
