"""Checkpoint files on disk: loads that never run code, and saves that never leave half a file.

- ``safe_load``: ``torch.load(weights_only=True)``: tensors and plain data only. A pickle carrying
  code or custom objects is refused with ``UnsafeCheckpointError``, one line naming the file and the
  offending global.
- ``atomic_write``: a temporary file in the same folder, fsynced, then ``os.replace``d over the
  target, so a kill during a save leaves the previous checkpoint intact.
- ``AtomicCheckpointIO``: both, as the Lightning ``CheckpointIO`` plugin every one-file strategy gets.
  A save that finds the disk full (or the file-size limit reached) removes its temporary file and
  stops the run with ``DiskFullError``, naming the file and the last good checkpoint.
- ``newest_readable_checkpoint``: the checkpoint to name when the one asked for is damaged or missing.

Every error here is a ``CheckpointError``: the command line prints its one line, never a traceback.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written as asked; the message says which file and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file is not a plain weights checkpoint (loading it would run code or build arbitrary objects)."""


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for lack of space; the previous one is whole."""


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # no space, file-size limit, quota


def _os_error_in(err: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``err``: torch.save turns a failed write into a RuntimeError whose context
    is the write's own OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def disk_full_error(target: str | Path, err: BaseException) -> DiskFullError | None:
    """The one-line ``DiskFullError`` for a failed save of ``target`` when ``err`` (or what caused it) is a
    lack of space or the file-size limit; None for any other failure."""
    err = _os_error_in(err)
    if err is None or err.errno not in DISK_FULL_ERRNOS:
        return None
    target = Path(target)
    survivor = newest_readable_checkpoint(target.parent)
    kept = ("no earlier checkpoint is in that folder" if survivor is None
            else f"{target} still holds the previous checkpoint" if survivor == target
            else f"the last good checkpoint is {survivor}")
    return DiskFullError(f"disk full: could not write {target} ({err.strerror}); {kept}; the run stopped: free space "
                         "(or move --trainer.default_root_dir) and resume with --ckpt_path last")


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


def is_torch_file(path: str | Path) -> bool:
    """A whole ``torch.save`` archive: a zip (its directory sits at the end, so a truncated one fails)
    holding a pickle."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_torch_file(path: str | Path) -> None:
    """A clear error for a file that ``torch.load`` cannot read at all (it would fail deep inside)."""
    if Path(path).is_file() and not is_torch_file(path):
        beside = newest_readable_checkpoint(Path(path).parent, exclude=Path(path))
        hint = f"; the newest readable checkpoint beside it is {beside}" if beside is not None else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, and this file is "
                              f"truncated or in another format (a safetensors file must be named *.safetensors){hint}")


def is_readable_checkpoint(path: Path) -> bool:
    """Whole as far as can be told without loading it: a complete archive, or a sharded directory with
    its metadata and ``meta.pt``."""
    if path.is_dir():
        return (path / ".metadata").is_file() and (path / "meta.pt").is_file() and is_torch_file(path / "meta.pt")
    return path.is_file() and is_torch_file(path)


def checkpoints_in(folder: Path) -> list[Path]:
    """The ``*.ckpt`` files and FSDP2 folders in ``folder``, by name; hidden staging copies are not counted."""
    return sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(".")) if folder.is_dir() else []


def newest_readable_checkpoint(folder: Path, exclude: Path | None = None) -> Path | None:
    """The most recently written readable checkpoint in ``folder`` (see ``checkpoints_in``)."""
    found = [p for p in checkpoints_in(folder) if p != exclude]
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_readable_checkpoint(path):
            return path
    return None


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
        try:
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
            full = disk_full_error(path, err)
            if full is None:
                raise
            raise full from err

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).is_dir():
            raise CheckpointError(
                f"{path} is a sharded FSDP2 checkpoint: resume it with --config conf/trainer/fsdp2.yaml (any "
                "--trainer.devices, 1 included), or make one weights file with `python -m fluid_lightning checkpoint "
                "consolidate`")
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
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
