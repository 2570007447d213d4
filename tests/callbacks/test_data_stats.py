"""DataStatsLogger: in a fit, the data module's sample counters (delivered, and skipped by reason) reach
the logged metrics as data/<counter> each epoch."""

from __future__ import annotations

from lightning import Trainer
from tiny import DataOnlyModule, web_data

from fluid_lightning.callbacks import DataStatsLogger


def test_trainer_fit_with_stats_logger(shapes_dir, tmp_path):
    _, stats = shapes_dir
    dm = web_data(stats["train"]["urls"], resampled=True, epoch_batches=3)
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[DataStatsLogger()])
    trainer.fit(DataOnlyModule(), datamodule=dm)
    assert trainer.global_step == 6
    assert trainer.callback_metrics["data/samples"].item() == 6 * 4
    assert trainer.callback_metrics["data/bad_image"].item() == 0
