"""PeriodicCallback: the evaluation callbacks built on it run every N optimizer steps and once more at the
end of fit, before Lightning moves the model back to the CPU; in a real (3-step) fit their captioned grids,
throughput, shapes scores and FID reach TensorBoard at those steps."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
from tiny import fit_logged, tensorboard_events, tiny_fluid_and_shapes

from fluid_lightning.callbacks.fid import FIDCallback
from fluid_lightning.callbacks.image_grid import ImageGrid
from fluid_lightning.callbacks.periodic import PeriodicCallback
from fluid_lightning.callbacks.shapes_eval import ShapesEvalCallback
from fluid_lightning.callbacks.throughput import Throughput
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.sampling import SamplingSettings

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle"]


def test_callbacks_write_images_text_and_scalars_to_tensorboard(tmp_path):
    quick = SamplingSettings(steps=2, cfg=2.0)
    callbacks = [
        ImageGrid(PROMPTS, every_n_steps=2, sampling=quick, scale=2),
        Throughput(peak_flops=1e12, window=2),
        ShapesEvalCallback(every_n_steps=2, min_per_tag=0, max_prompts=12, sampling=quick, out_file=str(tmp_path / "shapes.jsonl")),
        FIDCallback(num_images=8, every_n_steps=2, sampling=quick),
    ]
    log_dir = fit_logged(tmp_path, callbacks)
    events = tensorboard_events(log_dir)
    tags = events.Tags()
    # a grid at step 2 and one at the end of fit (step 3)
    assert [e.step for e in events.Images("samples")] == [2, 3]
    grid = events.Images("samples")[0]
    assert grid.width == 2 * 64 and grid.height > 2 * 64  # 3 prompts of 32 px enlarged 2x, two columns, captions
    assert "samples/captions/text_summary" in tags["tensors"]
    assert sorted(log_dir.glob("samples/samples_step*.png"))
    for name in ("throughput/images_per_sec", "throughput/tokens_per_sec", "throughput/mfu"):
        values = [e.value for e in events.Scalars(name)]
        assert values and all(v > 0 for v in values), name
    mfu, images_per_sec = events.Scalars("throughput/mfu")[-1].value, events.Scalars("throughput/images_per_sec")[-1].value
    assert mfu == pytest.approx(images_per_sec * callbacks[1].flops_per_image / 1e12, rel=1e-4)
    # the first 12 suite prompts cover single_object, two_object and counting
    for tag in ("overall", "single_object", "two_object", "counting"):
        scalars = events.Scalars(f"shapes/{tag}")
        assert [e.step for e in scalars] == [2, 3] and all(0 <= e.value <= 1 for e in scalars)
    assert not set(TAGS[3:]) & {t.split("/")[1] for t in tags["scalars"] if t.startswith("shapes/")}
    assert len((tmp_path / "shapes.jsonl").read_text().splitlines()) == 12
    fid = events.Scalars("val/fid")
    assert [e.step for e in fid] == [2, 3] and all(e.value > 0 for e in fid)


def test_the_end_of_fit_run_comes_before_lightning_moves_the_model_to_the_cpu(tmp_path, monkeypatch):
    """A GPU run's last grid, FID and shapes scores are sampled on the GPU: a single-device strategy's
    teardown, which comes before ``on_fit_end``, moves the model to the CPU."""
    order = []

    class Final(PeriodicCallback):
        def run(self, trainer, pl_module):
            order.append("final run")

    model, data = tiny_fluid_and_shapes()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[Final(every_n_steps=0, on_fit_end=True)])
    teardown = trainer.strategy.teardown
    monkeypatch.setattr(trainer.strategy, "teardown", lambda: (order.append("model to the cpu"), teardown()))
    trainer.fit(model, data)
    assert order == ["final run", "model to the cpu"]


def test_a_step_seen_several_times_under_gradient_accumulation_runs_once_and_the_end_of_fit_adds_no_repeat():
    runs = []

    class Record(PeriodicCallback):
        def run(self, trainer, pl_module):
            runs.append(trainer.global_step)

    callback = Record(every_n_steps=2, on_fit_end=True)
    trainer = SimpleNamespace(global_step=0)
    for step in (0, 0, 1, 1, 2, 2, 3, 3, 4, 4):  # two batches per optimizer step
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, 0)
    callback.on_train_end(trainer, None)  # step 4 was just run
    assert runs == [2, 4]
    trainer.global_step = 5
    callback.on_train_end(trainer, None)
    assert runs == [2, 4, 5]


def test_a_callback_that_switches_itself_off_warns_once_and_runs_no_more():
    runs = []

    class Fragile(PeriodicCallback):
        def run(self, trainer, pl_module):
            runs.append(trainer.global_step)
            self.switch_off("no data")

    callback = Fragile(every_n_steps=1, on_fit_end=True)
    with pytest.warns(UserWarning, match="Fragile is off: no data. Training continues without it.") as record:
        for step in (1, 2, 3):
            callback.on_train_batch_end(SimpleNamespace(global_step=step), None, None, None, 0)
        callback.switch_off("still no data")
    assert runs == [1] and len(record) == 1
