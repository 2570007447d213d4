"""Random draws for masking, orders, timesteps and noise: one seed gives the same numbers on any
device and under any default dtype.

Each draw runs on the ``torch.Generator``'s own device (so a CPU ``torch.Generator`` can drive CUDA work) in an
explicit dtype, then moves to the device it is used on. The explicit dtype matters because Lightning's
``bf16-true`` makes bfloat16 the default dtype inside every step: a bfloat16 uniform has only 256
levels, so random orders would tie (ties break towards low token indices) and noise would be coarse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _source(rng: torch.Generator | None, device) -> torch.device:
    return rng.device if rng is not None else torch.device(device)


def uniform(shape: Sequence[int], device, rng: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """U[0, 1) of ``dtype`` (float32 unless asked) on ``device``."""
    return torch.rand(tuple(shape), generator=rng, dtype=dtype, device=_source(rng, device)).to(device)


def normal(shape: Sequence[int], device, rng: torch.Generator | None = None) -> Tensor:
    """Standard normal float32 on ``device``."""
    return torch.randn(tuple(shape), generator=rng, dtype=torch.float32,
                       device=_source(rng, device)).to(device)


def integers(high: int, shape: Sequence[int], device, rng: torch.Generator | None = None) -> Tensor:
    """Uniform int64 in [0, high) on ``device``."""
    return torch.randint(0, high, tuple(shape), generator=rng, device=_source(rng, device)).to(device)
