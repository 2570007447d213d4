"""Checkpoint files: safe loading and atomic saving (``files``), the one ``load`` every entry point
uses (``loading``), the FSDP2 strategy with atomic sharded saves (``strategy``), and consolidation
into one safetensors file (``consolidate``)."""

from .consolidate import consolidate, read_consolidated
from .files import AtomicCheckpointIO, UnsafeCheckpointError, atomic_write, find_last_checkpoint, safe_load
from .loading import load, upgrade_hparams
from .strategy import AtomicModelParallelStrategy, publish_atomically

__all__ = [
    "AtomicCheckpointIO",
    "AtomicModelParallelStrategy",
    "UnsafeCheckpointError",
    "atomic_write",
    "consolidate",
    "find_last_checkpoint",
    "load",
    "publish_atomically",
    "read_consolidated",
    "safe_load",
    "upgrade_hparams",
]
