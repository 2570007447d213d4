"""One inference file from a training checkpoint: a sharded FSDP2 directory or a ``.ckpt`` file →
one ``.safetensors`` file holding the module weights (EMA included) and the model config as metadata.
Optimiser state is left out (it is for resuming only). ``checkpointing.load`` reads the result."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from .files import atomic_write, safe_load
from .sharded import check_sharded_checkpoint

CONFIG_KEY = "fluid_lightning.config"  # safetensors metadata key holding model.init_args as JSON


def read_training_checkpoint(src: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(module state dict, the rest of the checkpoint) from a .ckpt file or a sharded FSDP2 directory."""
    if src.is_dir():
        meta = check_sharded_checkpoint(src)  # the conversion reads the index and non-tensor items with pickle
        with tempfile.TemporaryDirectory() as tmp:
            full = Path(tmp) / "full.pt"
            dcp_to_torch_save(src, full)
            state = safe_load(full)["state_dict"]
        return state, meta
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    checkpoint = safe_load(src)
    return checkpoint.pop("state_dict"), checkpoint


def consolidate(src: str | Path, out: str | Path) -> Path:
    """Write the module weights of a training checkpoint (sharded or not) to one safetensors file with
    the model config in its metadata."""
    if Path(out).suffix != ".safetensors":
        raise ValueError(f"{out}: the consolidated file is safetensors; name it *.safetensors")
    state, meta = read_training_checkpoint(Path(src))
    hparams = {k: v for k, v in dict(meta.get("hyper_parameters", {})).items() if not k.startswith("_")}
    if not hparams:
        raise ValueError(f"{src} has no hyper_parameters: it was not written by a config-built module")
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, Tensor)}
    metadata = {CONFIG_KEY: json.dumps(hparams, default=list), "global_step": str(meta.get("global_step", -1))}
    out = Path(out)
    atomic_write(out, lambda f: f.write(save(tensors, metadata=metadata)))
    return out


def read_consolidated(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(model config, weights) of a file written by ``consolidate``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path} is not a readable safetensors file ({err}); consolidate it again") from err
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no {CONFIG_KEY!r} metadata; write it with `fluid_lightning checkpoint consolidate`")
    return json.loads(metadata[CONFIG_KEY]), load_file(str(path))
