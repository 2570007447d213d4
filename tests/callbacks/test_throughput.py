"""Throughput: MFU divides by a GPU's dense bf16 peak (not Lightning's with-sparsity figure, and the H200
by its plain name), and by none on a CPU. Its scalars in a real fit's TensorBoard: test_periodic.py."""

from __future__ import annotations

import pytest
import torch

from fluid_lightning.callbacks.throughput import peak_flops


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
