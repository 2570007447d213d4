"""The shared *when* of the evaluation callbacks: every N optimizer steps and at the end of fit."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


class PeriodicCallback(L.Callback):
    """Calls ``run(trainer, pl_module)`` every ``every_n_steps`` optimizer steps (0 = never
    during training) and, if ``on_fit_end``, once more at the end of fit unless that step was
    just done. ``global_step`` counts optimizer steps, so with gradient accumulation the batch
    hook sees a step several times: the ``_last_step`` guard runs it once."""

    def __init__(self, every_n_steps: int, on_fit_end: bool):
        self.every_n_steps, self.at_fit_end = every_n_steps, on_fit_end
        self._last_step = -1

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        raise NotImplementedError

    def _run_once(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        name, start = type(self).__name__, time.perf_counter()
        rank_zero_info(f"{name}: running at step {trainer.global_step} ...")  # else a silent pause of up to minutes
        self.run(trainer, pl_module)
        rank_zero_info(f"{name}: done in {time.perf_counter() - start:.1f} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run_once(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step:
            self._run_once(trainer, pl_module)


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
