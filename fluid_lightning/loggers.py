"""The TensorBoard logger every fit gets: the cards a user opens first are the useful ones.

Lightning's logger adds an ``epoch`` scalar to every log call and an ``hp_metric`` of -1 at the start,
which become the first two cards of TensorBoard's scalar tab. Here ``epoch`` is filed under
``train/epoch``, and ``hp_metric`` is only written when a callback has a value for it (the
``ShapesEvalCallback`` writes the final ``shapes/overall``), so the HPARAMS tab compares runs by it.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger


class FluidTensorBoardLogger(TensorBoardLogger):
    def __init__(self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None,
                 default_hp_metric: bool = False, **kwargs: Any):
        super().__init__(save_dir, name=name, version=version, default_hp_metric=default_hp_metric, **kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "epoch" in metrics:
            metrics = {("train/epoch" if k == "epoch" else k): v for k, v in metrics.items()}
        super().log_metrics(metrics, step)
