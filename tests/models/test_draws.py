"""Random draws for masks, orders, timesteps and noise: one seeded generator gives the same numbers under
any default dtype (bf16-true makes bfloat16 the default inside every step), as float32 uniforms that do
not tie, float32 normals and int64 integers, on the device asked for. Through sampling:
tests/models/test_generator.py."""

from __future__ import annotations

import torch

from fluid_lightning.models.draws import integers, normal, uniform


def _draws(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return uniform((4, 1000), "cpu", rng), normal((4, 8), "cpu", rng), integers(10, (4, 8), "cpu", rng)


def test_a_seed_gives_the_same_float32_draws_under_a_bf16_default_dtype():
    expected = _draws(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        got = _draws(0)
    finally:
        torch.set_default_dtype(torch.float32)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.int64]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(got[0].unique()) > 3900  # of 4000: random orders (almost) never tie; a bf16 uniform has 256 levels
    assert not torch.equal(_draws(1)[0], expected[0])
    assert 0 <= expected[2].min() and expected[2].max() < 10
