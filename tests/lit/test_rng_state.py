"""Per-rank random state: captured and restored exactly, each rank its own stream."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fluid_lightning.lit.rng_state import capture_rng_state, restore_rank_rng_state, restore_rng_state


def test_rng_state_round_trips():
    import random

    import numpy as np

    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(safe_load_roundtrip(state))
    second = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(first[0], second[0])
    assert (first[1] == second[1]).all() and first[2] == second[2]


def test_each_rank_restores_its_own_stream_and_extra_ranks_keep_theirs():
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(capture_rng_state())
    expected = torch.rand(3)  # what rank 1's stream (seed 1) draws next
    torch.manual_seed(5)
    restore_rank_rng_state({"rng_states": states}, rank=1, world_size=2)
    torch.testing.assert_close(torch.rand(3), expected)

    torch.manual_seed(7)  # a third rank's own stream: a 2-process checkpoint has nothing for it
    own = torch.get_rng_state()
    with pytest.warns(UserWarning, match="random state of 2 process"):
        restore_rank_rng_state({"rng_states": states}, rank=2, world_size=3)
    assert torch.equal(torch.get_rng_state(), own)


def safe_load_roundtrip(obj, tmp=Path("/tmp")):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
