"""Sharded (FSDP2 / torch.distributed.checkpoint) directories, checked before anything reads them.

A DCP directory holds ``meta.pt`` (Lightning's non-tensor state), one ``.distcp`` file per rank and a
``.metadata`` index. torch reads the index with plain ``pickle`` and the non-tensor items inside the
shards (optimizer param groups, counters) with ``torch.load(weights_only=False)``: either could run
code. ``check_sharded_checkpoint`` reads all three as plain data first: the index through an
allow-list unpickler (the DCP metadata classes, torch sizes, dtypes and layouts, paths), ``meta.pt``
and every non-tensor item weights-only. Anything else is refused with ``UnsafeCheckpointError``
before torch touches the directory. Every path that reads a directory calls it: ``consolidate`` and
``AtomicModelParallelStrategy.load_checkpoint`` (``fit``/``validate``/``test --ckpt_path DIR``).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from .files import CheckpointError, is_readable_checkpoint, newest_readable_checkpoint, refusal, safe_load

_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "_MEM_FORMAT_ENCODING", "StorageMeta", "MetadataIndex"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # rebuilds torch.strided from its name
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds only the classes a DCP index is made of (pickle's own
    "restricting globals" recipe); any other global stops the load before it is called."""

    def find_class(self, module: str, name: str):
        if name in _DCP_CLASSES.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANTS)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def read_metadata(path: Path) -> Metadata:
    """A DCP ``.metadata`` index, read as the metadata classes and plain data only."""
    try:
        with path.open("rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise refusal(path, err) from err
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint index ({type(err).__name__}: {err}); "
                              "the sharded checkpoint is damaged: resume from another one") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path} holds a {type(metadata).__name__}, not a checkpoint index")
    return metadata


def _check_byte_items(folder: Path, metadata: Metadata) -> None:
    """Every non-tensor item of the shards loads weights-only (torch itself would load it with pickle)."""
    for index, info in (metadata.storage_data or {}).items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        shard = folder / info.relative_path
        if shard.parent != folder or not shard.is_file():
            raise CheckpointError(f"{folder / '.metadata'} points {index.fqn!r} at {info.relative_path!r}, which is "
                                  "not a shard file of this directory")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{shard}: {index.fqn!r} is stored with transforms "
                                  f"{list(info.transform_descriptors)}, which this loader does not check")
        with shard.open("rb") as f:
            f.seek(info.offset)
            item = io.BytesIO(f.read(info.length))
        try:
            torch.load(item, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise refusal(f"{shard} (item {index.fqn!r})", err) from err


def check_sharded_checkpoint(folder: str | Path) -> dict:
    """Refuse, in one line naming the file, a sharded checkpoint whose loading could run code; return its
    ``meta.pt`` (Lightning's non-tensor state), read weights-only."""
    folder = Path(folder)
    if not is_readable_checkpoint(folder):
        beside = newest_readable_checkpoint(folder.parent, exclude=folder)
        hint = f"; the newest readable checkpoint beside it is {beside}" if beside is not None else ""
        raise CheckpointError(f"{folder} is a directory but not a whole sharded Lightning checkpoint (it needs "
                              f".metadata and a readable meta.pt){hint}")
    meta = safe_load(folder / "meta.pt")
    for rank_index in sorted(folder.glob("__*.metadata")):  # written per rank when saved without collectives
        _check_byte_items(folder, read_metadata(rank_index))
    _check_byte_items(folder, read_metadata(folder / ".metadata"))
    return meta
