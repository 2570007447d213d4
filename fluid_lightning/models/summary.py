"""What a module's parameters are: counts of generator configs without allocating weights (meta
device), and the dtype of a module's weights."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from .transformer import param_count


def build_on_meta(config: dict[str, Any]) -> torch.nn.Module:
    """The module a ``{class_path, init_args}`` config names, on the meta device (no memory)."""
    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    with torch.device("meta"):
        return cls(**config.get("init_args", {}))


def generator_param_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters of the image transformer (embeddings, blocks, norm), the text aligner and the
    token head; the frozen T5 is not part of the generator and never counted."""
    return generator_param_split(build_on_meta(config))


def generator_param_split(model: torch.nn.Module) -> dict[str, int]:
    """`generator_param_counts` of a built generator (a FluidGenerator or its EMA copy)."""
    aligner, head, total = param_count(model.text), param_count(model.head), param_count(model)
    return {"transformer": total - aligner - head, "aligner": aligner, "head": head, "total": total}


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the module's weights (float32 for weightless ones such as pixel patches)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
