"""The TensorBoard logger every fit gets: no hp_metric card of -1 at the start (only a value a callback
logs), and Lightning's epoch filed under train/epoch, so the first cards a user opens are the useful ones.
In a real quickstart run: tests/test_cli.py."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fluid_lightning.loggers import FluidTensorBoardLogger


def _scalars(logger: TensorBoardLogger) -> dict[str, list[tuple[int, float]]]:
    logger.log_hyperparams({"lr": 1e-3, "width": 32})  # what Lightning does at the start of fit
    logger.log_metrics({"epoch": 0, "train/loss": 0.5}, step=1)  # Lightning adds the epoch to every call
    logger.log_metrics({"epoch": 1, "train/loss": 0.25}, step=2)
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_no_hp_metric_placeholder_and_the_epoch_is_filed_under_train(tmp_path):
    assert _scalars(FluidTensorBoardLogger(str(tmp_path / "ours"))) == {
        "train/epoch": [(1, 0.0), (2, 1.0)], "train/loss": [(1, 0.5), (2, 0.25)]}
    # Lightning's own logger, for contrast: both cards a user would open first and learn nothing from
    assert {"epoch", "hp_metric"} <= set(_scalars(TensorBoardLogger(str(tmp_path / "stock"))))


def test_a_metric_a_callback_logs_as_hp_metric_is_written(tmp_path):
    logger = FluidTensorBoardLogger(str(tmp_path))
    logger.log_hyperparams({"lr": 1e-3}, metrics={"hp_metric": 0.75})  # ShapesEvalCallback at the end of fit
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("hp_metric")] == [0.75]
