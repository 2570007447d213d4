"""What only a CUDA GPU shows: uint8 batches converted on the GPU, CPU-seeded sampling on the GPU, bf16 on CUDA with the EMA and MFU,
FSDP2 over NCCL with compiled, checkpointed blocks. Skipped without CUDA (CI); on a GPU machine run
by ``benchmarks/gpu_checks.sh``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny import CONF, ROOT, tiny_generator, tiny_module

from fluid_lightning.callbacks import Throughput
from fluid_lightning.checkpointing import safe_load
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import ShapesDataModule
from fluid_lightning.sampling import SamplingSettings

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_uint8_batches_pinned_moved_and_converted_on_cuda_equal_the_cpu_floats():
    values = torch.arange(256, dtype=torch.uint8).repeat(2 * 3 * 8 * 8 // 256 + 1)[: 2 * 8 * 8 * 3]
    pixels = values.reshape(2, 8, 8, 3).permute(0, 3, 1, 2)  # channels-last, as WebDataModule delivers
    on_gpu = images_to_float(pixels.pin_memory().to("cuda", non_blocking=True))
    assert on_gpu.is_contiguous() and torch.equal(on_gpu.cpu(), images_to_float(pixels))
    every_value = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(images_to_float(every_value.cuda()).cpu(), images_to_float(every_value))


def test_a_cpu_generator_drives_cuda_sampling_like_on_the_cpu(text):
    torch.manual_seed(0)
    gen = tiny_generator(grid_size=4).eval()
    emb, mask = text
    on_cpu = gen.sample(emb, mask, steps=4, cfg=2.0, rng=torch.Generator().manual_seed(0))
    on_gpu = gen.cuda().sample(emb.cuda(), mask.cuda(), steps=4, cfg=2.0, rng=torch.Generator().manual_seed(0))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)


class Record(L.Callback):
    """Metrics after every step, and samples at the end of training, where the image callbacks take
    theirs (after fit, Lightning has moved the model back to the CPU)."""

    def __init__(self):
        self.metrics, self.images = [], None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    def on_train_end(self, trainer, module):
        self.images = module.log_images({"caption": ["a photo of a red circle"]}, SamplingSettings(steps=2))["samples"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_training_on_cuda_keeps_a_float32_ema_samples_and_reports_mfu(precision, tmp_path):
    module = tiny_module(ema_decay=0.9999)
    record = Record()
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[record, Throughput(window=2)])
    trainer.fit(module, ShapesDataModule(image_size=32, num_train=64, batch_size=8))
    losses = [m["train/loss"] for m in record.metrics]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert {p.dtype for p in module.ema.parameters()} == {torch.float32}
    assert 0 < record.metrics[-1]["throughput/mfu"] < 1  # the GPU's peak was found
    assert record.images.device.type == "cuda" and torch.isfinite(record.images).all()


def test_fsdp2_over_nccl_with_compiled_checkpointed_blocks_fits_and_resumes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}

    def fit(root: Path, steps: int, *extra: str) -> str:
        args = [sys.executable, "-m", "fluid_lightning", "fit", "--config", str(CONF / "trainer/fsdp2.yaml"),
                "--config", str(CONF / "data/shapes.yaml"), "--config", str(CONF / "model/tiny_fluid.yaml"),
                "--trainer.accelerator=gpu", "--trainer.devices=1", f"--trainer.max_steps={steps}",
                "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
                "--model.init_args.compile=true", "--model.init_args.activation_checkpointing=true",
                "--data.init_args.batch_size=8", "--trainer.default_root_dir", str(root), *extra]
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout + done.stderr

    fit(tmp_path / "a", 3)
    checkpoint = next((tmp_path / "a").rglob("last.ckpt"))
    log = fit(tmp_path / "b", 5, "--ckpt_path", str(checkpoint))
    assert "Restored all states" in log
    assert safe_load(next((tmp_path / "b").rglob("last.ckpt")) / "meta.pt")["global_step"] == 5
