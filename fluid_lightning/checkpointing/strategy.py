"""FSDP2 checkpoints: ``AtomicModelParallelStrategy`` (conf/trainer/fsdp2.yaml) is Lightning's
``ModelParallelStrategy`` writing each checkpoint (a directory of shards, or one file) to a hidden
staging path first and swapping it in only when every rank has finished, so a kill mid-save leaves
the previous checkpoint whole. A save that finds the disk full removes its staging folder and stops
the run on every rank with ``DiskFullError``. Its loads check the directory first
(``sharded.check_sharded_checkpoint``) and are ``weights_only``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.fabric.strategies.model_parallel as fabric_model_parallel
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributed.checkpoint.api import CheckpointException

from .files import CheckpointError, disk_full_error, refusal
from .sharded import check_sharded_checkpoint


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS or
    file system has no such call (macOS, NFS), and the caller falls back to two renames."""
    if sys.platform != "linux":
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_atomically(staging: Path, target: Path) -> None:
    """Put a fully written ``staging`` file or directory at ``target``, replacing what is there.

    Readers of ``target`` see the old checkpoint or the new one, never a mix: a new target is one
    rename; an existing one is swapped with ``RENAME_EXCHANGE`` and the old copy deleted afterwards.
    Without that call, the old target is renamed to ``.<name>.old`` first; a kill between the two
    renames leaves it there, and ``AtomicModelParallelStrategy.load_checkpoint`` falls back to it.
    """
    for file in [staging] if staging.is_file() else [p for p in staging.rglob("*") if p.is_file()]:
        _fsync(file)
    old = target.with_name(f".{target.name}.old")
    if not target.exists():
        os.replace(staging, target)
    elif _exchange(staging, target):
        _remove(staging)  # it now holds the previous checkpoint
    else:
        _remove(old)
        os.replace(target, old)
        os.replace(staging, target)
    _remove(old)  # also one left by a kill between the two renames of an earlier save
    _fsync(target.parent, directory=True)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) with atomic checkpoint saves and safe loads.

    Every rank writes its shard into ``.<name>.partial`` beside the target; after a barrier rank 0
    publishes it with ``publish_atomically``. A save killed part-way leaves only the staging folder
    (removed by the next save), and ``--ckpt_path last`` still finds the previous checkpoint whole.
    Needs a file system shared by all nodes, as sharded checkpoints always do.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        staging = path.with_name(f".{path.name}.partial")
        if self.is_global_zero:
            _remove(staging)  # left behind by a save that was killed
        self.barrier("fluid_lightning.checkpoint_staging")
        failure: BaseException | None = None
        try:
            super().save_checkpoint(checkpoint, staging, storage_options)
        except (OSError, RuntimeError, CheckpointException) as err:
            failure = err  # rank 0 alone writes meta.pt: the others must hear of its failure, not hang
        if self.reduce_boolean_decision(failure is not None, all=False):
            if self.is_global_zero:
                _remove(staging)
            self.barrier("fluid_lightning.checkpoint_failed")
            if failure is None:
                raise CheckpointError(f"another process could not write its part of {path}; the previous checkpoint "
                                      "is kept; that process's log says why")
            full = _disk_full(path, failure)
            if full is None:
                raise failure
            raise full from failure
        self.barrier("fluid_lightning.checkpoint_written")
        if self.is_global_zero:
            publish_atomically(staging, path)
        self.barrier("fluid_lightning.checkpoint_published")

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        old = path.with_name(f".{path.name}.old")
        if not path.exists() and old.exists():
            rank_zero_warn(f"{path} is missing (a save was killed while swapping it in); loading the previous "
                           f"checkpoint from {old}")
            path = old
        if path.is_dir():
            check_sharded_checkpoint(path)  # torch reads its index and non-tensor items with plain pickle
        try:  # weights_only whatever the caller asked: the metadata file must not be able to run code
            with _optimizer_state_named_by_param_groups(self.model, self.optimizers):
                return super().load_checkpoint(path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise refusal(path / "meta.pt" if path.is_dir() else path, err) from err


def _disk_full(path: Path, failure: BaseException) -> CheckpointError | None:
    """``DiskFullError`` when a failed sharded save (DCP wraps each rank's own error in a
    CheckpointException) ran out of space; None for any other failure."""
    causes = [failure]
    if isinstance(failure, CheckpointException):
        causes = [exc for exc, _trace in failure.failures.values()]
    return next((full for cause in causes if (full := disk_full_error(path, cause)) is not None), None)


@contextmanager
def _optimizer_state_named_by_param_groups(module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]):
    """Resuming a one-file checkpoint (one process or DDP) under FSDP2: Lightning names its optimizer
    state's numbered parameters by walking ``module.named_parameters()``, but an optimizer numbers them
    group by group (here: decayed weights, then the rest), so the names come out wrong and loading fails
    on shapes. Within this context they are named in the optimizer's own group order."""
    lightning_rekey = fabric_model_parallel._rekey_optimizer_state_if_needed

    def rekey(state: dict[str, Any], _module: torch.nn.Module) -> dict[str, Any]:
        groups = state["param_groups"]
        if not groups or not groups[0]["params"] or not isinstance(groups[0]["params"][0], int):
            return lightning_rekey(state, _module)
        sizes = [len(g["params"]) for g in groups]
        optimizer = next((o for o in optimizers if [len(g["params"]) for g in o.param_groups] == sizes), None)
        if optimizer is None:
            raise ValueError(f"the checkpoint's optimizer has parameter groups of sizes {sizes}, which no optimizer of "
                             "this run has: was it written by another model config?")
        names = {id(p): name for name, p in module.named_parameters()}
        name_of = {i: names[id(p)] for saved, live in zip(groups, optimizer.param_groups)
                   for i, p in zip(saved["params"], live["params"])}
        return {"state": {name_of[i]: v for i, v in state["state"].items()},
                "param_groups": [{**g, "params": [name_of[i] for i in g["params"]]} for g in groups]}

    fabric_model_parallel._rekey_optimizer_state_if_needed = rekey
    try:
        yield
    finally:
        fabric_model_parallel._rekey_optimizer_state_if_needed = lightning_rekey
