"""Throughput: images/s, tokens/s, FLOP/s and MFU of training, over a sliding window of steps.

FLOPs per image are *estimated* as 6 × trainable parameters × image tokens (Kaplan et
al.'s 2 forward + 4 backward multiply-adds per parameter per token). That counts the
transformer's dense layers and the diffusion head once per token; it leaves out attention
scores (small at 256 tokens) and the head's ``diffusion_batch_mul`` repeats on masked
tokens, and counts the text aligner at the image's token count. Counted by
``torch.utils.flop_counter`` over this estimate (``benchmarks/bench_strategies.py`` prints
both): 1.01 for the 369M config, whose 128-token aligner offsets the head's repeats; 1.3 for
tiny_fluid at 128 wide × 2 blocks, where the head is a larger share and MFU reads that much
low. Give ``flops_per_image`` to override.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.utilities.rank_zero import rank_zero_info

# Dense bf16 peaks (no 2:4 sparsity), from NVIDIA's datasheets; the first key found in the device name
# wins. Lightning's table lists Hopper's with-sparsity figures (MFU would read half) and does not
# recognise the plain "NVIDIA H200" name.
DENSE_BF16_PEAK_FLOPS = {"h200 nvl": 835e12, "h200": 989.4e12, "h100 nvl": 835e12, "h100 pcie": 756e12,
                         "h100": 989.4e12, "a100": 312e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """One device's peak FLOP/s for the training precision: the dense bf16 table above for bf16 on the
    GPUs it lists, else Lightning's table; None on CPUs and unknown GPUs."""
    if device.type != "cuda":
        return None
    bf16 = "bf16" in str(precision)
    name = torch.cuda.get_device_name(device).lower()
    if bf16:
        for key, flops in DENSE_BF16_PEAK_FLOPS.items():
            if key in name:
                return flops
    return get_available_flops(device, torch.bfloat16 if bf16 else torch.float32)


def estimated_flops_per_image(module: torch.nn.Module, tokens_per_image: int) -> float:
    """Training FLOPs per image as this module's docstring estimates them: 6 × trainable parameters × tokens
    (frozen parts, such as the T5 encoder, the tokenizer and the EMA copy, are not counted)."""
    return 6.0 * sum(p.numel() for p in module.parameters() if p.requires_grad) * tokens_per_image


class Throughput(L.Callback):
    def __init__(self, peak_flops: float | None = None, window: int = 20, flops_per_image: float | None = None,
                 tokens_per_image: int | None = None):
        """``peak_flops``: one device's peak FLOP/s for the training dtype (H100 bf16 dense ≈ 989e12);
        None looks the GPU up (``peak_flops``) and skips MFU where unknown (CPUs).
        ``window``: steps averaged. ``tokens_per_image``: default ``generator.num_tokens``."""
        self.peak_flops, self.window = peak_flops, window
        self.flops_per_image, self.tokens_per_image = flops_per_image, tokens_per_image
        self._times: deque[float] = deque(maxlen=window)
        self._images: deque[int] = deque(maxlen=window)
        self._last: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        generator = getattr(pl_module, "generator", None)
        if self.tokens_per_image is None:
            self.tokens_per_image = int(getattr(generator, "num_tokens", 0)) or None
        if self.flops_per_image is None and self.tokens_per_image:
            self.flops_per_image = estimated_flops_per_image(pl_module, self.tokens_per_image)
        if self.peak_flops is None:
            self.peak_flops = peak_flops(pl_module.device, trainer.precision)
        if self.peak_flops is None:
            rank_zero_info("Throughput: no peak_flops given or known for this device; MFU is not logged")
        if self.tokens_per_image is None:
            rank_zero_info("Throughput: the module has no generator.num_tokens; tokens/s and MFU are not logged")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._last is None:  # the first step's time includes warm-up; start the clock here
            self._sync(pl_module)
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(pl_module)  # CUDA runs asynchronously: time finished work, not queued work
        now = time.perf_counter()
        self._times.append(now - self._last)
        self._images.append(batch_size_of(batch))
        self._last = now
        seconds = sum(self._times)
        if seconds <= 0:
            return
        # every rank sees the same-sized batches (the data modules guarantee it): scale to the world
        images_per_sec = sum(self._images) * trainer.world_size / seconds
        metrics = {"throughput/images_per_sec": images_per_sec}
        if self.tokens_per_image:
            metrics["throughput/tokens_per_sec"] = images_per_sec * self.tokens_per_image
        if self.flops_per_image:
            flops_per_sec = images_per_sec * self.flops_per_image
            metrics["throughput/flops_per_sec"] = flops_per_sec
            if self.peak_flops:
                metrics["throughput/mfu"] = flops_per_sec / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("image", "latent"):
            if key in batch:
                return int(batch[key].shape[0])
        if "caption" in batch:
            return len(batch["caption"])
    if isinstance(batch, (list, tuple)) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    raise ValueError("cannot tell the batch size; batches should hold 'image' or 'latent'")
