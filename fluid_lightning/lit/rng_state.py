"""Per-rank random state, which Lightning does not checkpoint.

Masks, orders, timesteps, noise and caption dropout draw from the global RNGs, so an exact resume
needs their state, and data-parallel ranks need different streams for their different images.
``GeneratorModule`` seeds each rank (``seed_rank``) and saves/restores every rank's state.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn


def seed_rank(rank: int) -> None:
    """Seed rank ``rank`` > 0 with the global seed + rank (MAR seeds seed + rank). ``seed_everything``
    gives every process the same seed, so otherwise all ranks would draw the same masks and noise.
    Rank 0 keeps its stream (a one-process run is unaffected); without a global seed every process
    already has a seed of its own."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if rank == 0 or seed is None:
        return
    seed = int(seed) + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank (a collective when several processes run)."""
    state = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rank_rng_state(checkpoint: dict[str, Any], rank: int, world_size: int) -> None:
    """Restore this rank's stream from ``capture_rank_rng_states``' list. Ranks that the checkpoint
    has no state for (resuming on more processes) keep their ``seed_rank`` streams."""
    states = checkpoint.get("rng_states")
    if states is None:  # written before states were kept per rank: rank 0's only
        states = [checkpoint["rng_state"]] if "rng_state" in checkpoint else []
    if rank < len(states):
        restore_rng_state(states[rank])
    if states and world_size > len(states):
        rank_zero_warn(f"the checkpoint holds the random state of {len(states)} process(es); "
                       f"ranks {len(states)}..{world_size - 1} start new streams (global seed + rank)")


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors/ints, loadable with weights_only."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
