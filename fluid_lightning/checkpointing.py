"""Checkpoint files: atomic writes, safe loads, RNG state, and consolidation to one safetensors file.

- ``AtomicCheckpointIO`` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins`` in
  conf/trainer/*.yaml): writes to a temporary file in the same folder, fsyncs, then ``os.replace``s
  it over the target, so a kill during a save leaves the previous checkpoint intact. It loads with
  ``torch.load(weights_only=True)``: tensors and plain data only, never pickled code.
- ``consolidate``: a sharded FSDP2 checkpoint (a directory written by ``ModelParallelStrategy``) or a
  ``.ckpt`` file → one ``.safetensors`` file holding the module weights (EMA included) and the
  model config as metadata; ``FluidPipeline.from_checkpoint`` loads it.
- ``AtomicModelParallelStrategy`` (FSDP2, conf/trainer/fsdp2.yaml): Lightning's
  ``ModelParallelStrategy`` writing each checkpoint (a directory of shards, or one file) to a hidden
  staging path first and swapping it in only when every rank has finished, so a kill mid-save leaves
  the previous checkpoint whole. Its loads are ``weights_only`` too.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

CONFIG_KEY = "fluid_lightning.config"  # safetensors metadata key holding model.init_args as JSON


class UnsafeCheckpointError(RuntimeError):
    """The file is not a plain weights checkpoint (it would run code or build arbitrary objects)."""


def _refusal(path, err: pickle.UnpicklingError) -> UnsafeCheckpointError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch's message is long; keep the line naming the refused global ("Unsupported global: ..." or
    # "Trying to load unsupported GLOBAL posix.system whose module posix is blocked").
    reason = next((line.split("error: ", 1)[-1] for line in lines if "unsupported global" in line.lower()),
                  lines[0] if lines else type(err).__name__).split(". Please use")[0]
    return UnsafeCheckpointError(
        f"refusing to load {path}: it is not a plain weights checkpoint ({reason}). Checkpoints load with "
        "weights_only=True so that a file cannot run code; re-save it from trusted code as tensors/plain data."
    )


def check_torch_file(path: str | Path) -> None:
    """A clear error for a file that ``torch.load`` cannot read at all (it would fail deep inside)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, and this file is "
                         "truncated or in another format (a safetensors file must be named *.safetensors)")


def load_module(cls: type, path: str | Path):
    """``cls.load_from_checkpoint`` on the CPU, tensors and plain data only, with errors that say when the
    file is not a checkpoint or holds the other kind of module (a tokenizer's where a generator's is
    needed, or the reverse)."""
    check_torch_file(path)
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except ValueError as err:  # Lightning refuses to build a class that is not a subclass of cls
        found = re.search(r"The class '[\w.]*?(\w+)' requested by the checkpoint", str(err))
        if found is None:
            raise
        raise ValueError(f"{path} is a {found.group(1)} checkpoint; this needs a {cls.__name__} one") from err


def safe_load(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` restricted to tensors and plain containers; a pickle carrying code or custom
    objects is refused with an error that names the file and the offending global."""
    check_torch_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from err


def _atomic_write(path: Path, write) -> None:
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
    """``TorchCheckpointIO`` with tmp-file + ``os.replace`` saves and ``weights_only=True`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        _atomic_write(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).is_dir():
            raise IsADirectoryError(
                f"{path} is a sharded FSDP2 checkpoint: resume it with --config conf/trainer/fsdp2.yaml (any "
                "--trainer.devices, 1 included), or make one weights file with `python -m fluid_lightning checkpoint "
                "consolidate`")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        # Ignore weights_only=False requests: resuming never needs arbitrary objects.
        return safe_load(path, map_location=map_location if map_location is not None else "cpu")


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` (file or FSDP2 folder) that ``fit`` runs rooted at ``root`` wrote: in
    ``root/checkpoints/`` (a fixed ModelCheckpoint dirpath, PreemptionCheckpoint's fallback) or a logger's
    ``root/<name>/version_*/checkpoints/`` (each run starts a new version, which Lightning's own
    ``ckpt_path="last"`` lookup does not search)."""
    root = Path(root)
    found = [*root.glob("checkpoints/last*.ckpt"), *root.glob("*/version_*/checkpoints/last*.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


# ---- directories (sharded FSDP2 checkpoints) ---------------------------------------------------------
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
        super().save_checkpoint(checkpoint, staging, storage_options)
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
        try:  # weights_only whatever the caller asked: the metadata file must not be able to run code
            with _optimizer_state_named_by_param_groups(self.model, self.optimizers):
                return super().load_checkpoint(path, weights_only=True)
        except pickle.UnpicklingError as err:
            raise _refusal(path / "meta.pt" if path.is_dir() else path, err) from err


@contextmanager
def _optimizer_state_named_by_param_groups(module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]):
    """Resuming a one-file checkpoint (one process or DDP) under FSDP2: Lightning names its optimizer
    state's numbered parameters by walking ``module.named_parameters()``, but an optimizer numbers them
    group by group (here: decayed weights, then the rest), so the names come out wrong and loading fails
    on shapes. Within this context they are named in the optimizer's own group order."""
    import lightning.fabric.strategies.model_parallel as model_parallel

    lightning_rekey = model_parallel._rekey_optimizer_state_if_needed

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

    model_parallel._rekey_optimizer_state_if_needed = rekey
    try:
        yield
    finally:
        model_parallel._rekey_optimizer_state_if_needed = lightning_rekey


# ---- RNG state (Lightning does not checkpoint it) --------------------------------------------------
# Masks, orders, timesteps, noise and caption dropout draw from the global RNG, so an exact resume
# needs its state, and data-parallel ranks need different streams for their different images.
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
    import torch.distributed as dist

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


# ---- consolidation ---------------------------------------------------------------------------------
def _read_training_checkpoint(src: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(module state dict, checkpoint metadata) from a .ckpt file or a sharded FSDP2 directory."""
    if src.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        meta_file = src / "meta.pt"  # Lightning's ModelParallelStrategy writes the non-tensor part here
        if not meta_file.is_file():
            raise FileNotFoundError(f"{src} is a directory but not a sharded Lightning checkpoint (no meta.pt)")
        with tempfile.TemporaryDirectory() as tmp:
            full = Path(tmp) / "full.pt"
            dcp_to_torch_save(src, full)
            state = safe_load(full)["state_dict"]
        return state, safe_load(meta_file)
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    checkpoint = safe_load(src)
    return checkpoint.pop("state_dict"), checkpoint


def consolidate(src: str | Path, out: str | Path) -> Path:
    """Write the module weights of a training checkpoint (sharded or not) to one safetensors file
    with the model config in its metadata. Optimiser state is left out (it is for resuming only)."""
    from safetensors.torch import save

    if Path(out).suffix != ".safetensors":
        raise ValueError(f"{out}: the consolidated file is safetensors; name it *.safetensors")
    state, meta = _read_training_checkpoint(Path(src))
    hparams = {k: v for k, v in dict(meta.get("hyper_parameters", {})).items() if not k.startswith("_")}
    if not hparams:
        raise ValueError(f"{src} has no hyper_parameters: it was not written by a config-built GeneratorModule")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, Tensor)}
    metadata = {CONFIG_KEY: json.dumps(hparams, default=list), "global_step": str(meta.get("global_step", -1))}
    out = Path(out)
    _atomic_write(out, lambda f: f.write(save(tensors, metadata=metadata)))
    return out


def load_consolidated(path: str | Path):
    """A ``GeneratorModule`` rebuilt from a consolidated safetensors file (config + weights)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .lit.generator_module import GeneratorModule

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a readable safetensors file ({err}); consolidate it again") from err
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no {CONFIG_KEY!r} metadata; write it with `fluid_lightning checkpoint consolidate`")
    module = GeneratorModule.from_config(json.loads(metadata[CONFIG_KEY]))
    module.load_state_dict(load_file(str(path)), strict=True)
    return module.eval()


def consolidate_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="fluid_lightning checkpoint", description="Checkpoint tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded FSDP2 directory or .ckpt → one .safetensors (weights + config)")
    cons.add_argument("src", help="checkpoint written by `fit` (an FSDP2 directory or a .ckpt file)")
    cons.add_argument("out", help="output .safetensors file")
    ns = parser.parse_args(argv)
    out = consolidate(ns.src, ns.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
