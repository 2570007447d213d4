"""``DataStatsLogger``: the data module's sample counters (delivered, and skipped by reason) in the logs."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback


class DataStatsLogger(Callback):
    """Logs `WebDataModule.stats()` as ``data/<counter>`` (summed over ranks) each epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "stats"):
            stats = {f"data/{k}": float(v) for k, v in datamodule.stats().items()}
            pl_module.log_dict(stats, sync_dist=True, reduce_fx="sum")
