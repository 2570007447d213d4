"""Checkpoint files: safe loading and atomic saving (``files``), sharded directories checked before
torch reads them (``sharded``), the one ``load`` every entry point uses (``loading``), the FSDP2
strategy with atomic sharded saves (``strategy``), and consolidation into one safetensors file
(``consolidate``)."""

from .consolidate import consolidate, read_consolidated
from .files import (
    AtomicCheckpointIO,
    CheckpointError,
    DiskFullError,
    UnsafeCheckpointError,
    atomic_write,
    checkpoints_in,
    find_last_checkpoint,
    newest_readable_checkpoint,
    safe_load,
)
from .loading import load, upgrade_hparams
from .sharded import check_sharded_checkpoint
from .strategy import AtomicModelParallelStrategy, publish_atomically

__all__ = [
    "AtomicCheckpointIO",
    "AtomicModelParallelStrategy",
    "CheckpointError",
    "DiskFullError",
    "UnsafeCheckpointError",
    "atomic_write",
    "check_sharded_checkpoint",
    "checkpoints_in",
    "consolidate",
    "find_last_checkpoint",
    "newest_readable_checkpoint",
    "load",
    "publish_atomically",
    "read_consolidated",
    "safe_load",
    "upgrade_hparams",
]
