"""Checkpoint files on disk: loads that never run code, and saves that never leave half a file.

- ``safe_load``: ``torch.load(weights_only=True)``: tensors and plain data only. A pickle carrying
  code or custom objects is refused with ``UnsafeCheckpointError``, one line naming the file and the
  offending global.
- ``atomic_write``: a temporary file in the same folder, fsynced, then ``os.replace``d over the
  target, so a kill during a save leaves the previous checkpoint intact.
- ``AtomicCheckpointIO``: both, as the Lightning ``CheckpointIO`` plugin every one-file strategy gets.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class UnsafeCheckpointError(ValueError):
    """The file is not a plain weights checkpoint (loading it would run code or build arbitrary objects)."""


def refusal(path: str | Path, err: pickle.UnpicklingError) -> UnsafeCheckpointError:
    """One line for torch's long refusal: the file, the refused global, and what to do."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # Keep only the line naming the global ("Unsupported global: ..." or "Trying to load unsupported
    # GLOBAL posix.system ..."); the rest of torch's text suggests weights_only=False, which would run it.
    reason = next((line.split("error: ", 1)[-1] for line in lines if "unsupported global" in line.lower()),
                  lines[0] if lines else type(err).__name__).split(". Please use")[0].split(". Check the")[0]
    return UnsafeCheckpointError(
        f"refusing to load {path}: it is not a plain weights checkpoint ({reason}); checkpoints load as "
        "tensors and plain data only, so that a file cannot run code: re-save it from trusted code as tensors"
    )


def check_torch_file(path: str | Path) -> None:
    """A clear error for a file that ``torch.load`` cannot read at all (it would fail deep inside)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, and this file is "
                         "truncated or in another format (a safetensors file must be named *.safetensors)")


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers."""
    check_torch_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise refusal(path, err) from err


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it over ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic saves and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).is_dir():
            raise IsADirectoryError(
                f"{path} is a sharded FSDP2 checkpoint: resume it with --config conf/trainer/fsdp2.yaml (any "
                "--trainer.devices, 1 included), or make one weights file with `python -m fluid_lightning checkpoint "
                "consolidate`")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        # weights_only whatever the caller asks: resuming never needs arbitrary objects.
        return safe_load(path, map_location=map_location if map_location is not None else "cpu")


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` (file or FSDP2 folder) that ``fit`` runs rooted at ``root`` wrote: in
    ``root/checkpoints/`` (where the default ModelCheckpoint writes) or a logger's
    ``root/<name>/version_*/checkpoints/`` (a ModelCheckpoint without a dirpath writes there, a new
    version per run, which Lightning's own ``ckpt_path="last"`` lookup does not search)."""
    root = Path(root)
    found = [*root.glob("checkpoints/last*.ckpt"), *root.glob("*/version_*/checkpoints/last*.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)
