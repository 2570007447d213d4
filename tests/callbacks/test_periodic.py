"""Callbacks in a real (3-step) fit: captioned grids, throughput, shapes scores and FID reach TensorBoard."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import CONF, kl_tokenizer

from fluid_lightning.callbacks.fid import FIDCallback
from fluid_lightning.callbacks.image_grid import ImageGrid
from fluid_lightning.callbacks.periodic import PeriodicCallback
from fluid_lightning.callbacks.shapes_eval import ShapesEvalCallback
from fluid_lightning.callbacks.throughput import Throughput, peak_flops
from fluid_lightning.cli import lightning_cli
from fluid_lightning.data.shards import write_shapes_shards
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.evaluation.fid import TinyConvFeatures
from fluid_lightning.lit.tokenizer_module import TokenizerModule
from fluid_lightning.sampling import SamplingSettings

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle"]


def _model_and_data():
    cli = lightning_cli(["--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"),
                         "--config", str(CONF / "model/tiny_fluid.yaml"), "--trainer.logger=false",
                         "--data.init_args.batch_size=4", "--data.init_args.num_train=64"], run=False)
    return cli.model, cli.datamodule


def _fit(tmp_path, callbacks, max_steps: int = 3) -> Path:
    model, data = _model_and_data()
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=logger,
                        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(model, data)
    return Path(logger.log_dir)


def _events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_callbacks_write_images_text_and_scalars_to_tensorboard(tmp_path):
    quick = SamplingSettings(steps=2, cfg=2.0)
    callbacks = [
        ImageGrid(PROMPTS, every_n_steps=2, sampling=quick, scale=2),
        Throughput(peak_flops=1e12, window=2),
        ShapesEvalCallback(every_n_steps=2, min_per_tag=0, max_prompts=12, sampling=quick, out_file=str(tmp_path / "shapes.jsonl")),
        FIDCallback(num_images=8, every_n_steps=2, sampling=quick),
    ]
    log_dir = _fit(tmp_path, callbacks)
    events = _events(log_dir)
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

    model, data = _model_and_data()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[Final(every_n_steps=0, on_fit_end=True)])
    teardown = trainer.strategy.teardown
    monkeypatch.setattr(trainer.strategy, "teardown", lambda: (order.append("model to the cpu"), teardown()))
    trainer.fit(model, data)
    assert order == ["final run", "model to the cpu"]


@pytest.mark.parametrize("name,precision,expected", [
    ("NVIDIA H200", "bf16-mixed", 989.4e12),  # Lightning's own table has no entry for this name
    ("NVIDIA H100 PCIe", "bf16-true", 756e12),
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),  # dense, not Lightning's with-sparsity 1979e12
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
])
def test_mfu_uses_dense_bf16_peaks(name, precision, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda", 0), precision) == expected
    assert peak_flops(torch.device("cpu"), precision) is None


def test_missing_metadata_is_reported_once_and_training_goes_on(tmp_path):
    callback = ShapesEvalCallback(metadata=str(tmp_path / "nope.jsonl"), every_n_steps=1)
    with pytest.warns(UserWarning, match="ShapesEvalCallback is off: no metadata file") as record:
        log_dir = _fit(tmp_path, [callback], max_steps=2)
    assert sum("ShapesEvalCallback" in str(w.message) for w in record) == 1
    assert not [t for t in _events(log_dir).Tags()["scalars"] if t.startswith("shapes/")]


def test_shapes_eval_tags_must_be_geneval_tags():
    with pytest.raises(ValueError, match="tags must be among single_object, .*got \\['colours'\\]"):
        ShapesEvalCallback(tags=["single_object", "colours"])


def test_image_grid_needs_prompts_or_none():
    with pytest.raises(ValueError, match="prompt"):
        ImageGrid([])


def test_fid_callback_without_its_weights_warns_once_and_goes_on_or_refuses_when_strict(tmp_path):
    missing = str(tmp_path / "pt_inception.pth")
    callback = FIDCallback(feature_weights=missing)
    with pytest.warns(UserWarning, match="FIDCallback is off"):
        callback.setup(None, None, "fit")
    assert "pass their local path" in callback.off_because
    with pytest.raises(FileNotFoundError, match="pass their local path"):
        FIDCallback(feature_weights=missing, strict=True).setup(None, None, "fit")


def test_validation_batches_of_uint8_pixels_give_what_float_batches_gave(tmp_path):
    """FID's real statistics and a tokenizer's image grid read WebDataModule's uint8 val batches."""
    write_shapes_shards(tmp_path, n=0, val_n=6, size=32, shard_size=3, progress=False)
    module, feature = TokenizerModule(kl_tokenizer()), TinyConvFeatures()
    results = {}
    for image_dtype in ("uint8", "float32"):
        data = WebDataModule(None, val_urls=str(tmp_path / "val"), image_size=32, batch_size=4, num_workers=0,
                             pin_memory=False, persistent_workers=False, image_dtype=image_dtype)
        trainer = SimpleNamespace(datamodule=data)
        fid = FIDCallback(feature=feature, num_images=5)
        assert fid._real_statistics(trainer, module) and len(fid.captions) == 5
        grid = ImageGrid(num_images=3)
        batch = grid._fixed_batch(trainer)
        assert batch["image"].dtype == getattr(torch, image_dtype)
        images = grid.images(module, batch)
        results[image_dtype] = [fid.metric.real_features_sum, fid.metric.real_features_cov_sum, fid.captions,
                                images["inputs"], images["reconstructions"]]
    for pixels, floats in zip(results["uint8"], results["float32"]):
        assert torch.equal(pixels, floats) if isinstance(pixels, torch.Tensor) else pixels == floats
