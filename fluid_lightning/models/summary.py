"""Parameter counts of generator configs without allocating weights (meta device)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from .transformer import param_count


def load_generator_config(path: str | Path, base: list[str | Path] = ()) -> dict[str, Any]:
    """The ``model.init_args.generator`` entry ({class_path, init_args}) of a YAML config merged
    over ``base`` configs, with ``${...}`` interpolations resolved as the CLI resolves them."""
    from ..config import load_config

    config = load_config(*base, path)
    try:
        generator = config["model"]["init_args"]["generator"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} has no model.init_args.generator entry") from err
    if isinstance(generator, dict) and "class_path" not in generator:
        generator = {"class_path": "fluid_lightning.models.generator.FluidGenerator", "init_args": generator}
    return generator


def build_on_meta(config: dict[str, Any]) -> torch.nn.Module:
    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    with torch.device("meta"):
        return cls(**config.get("init_args", {}))


def generator_param_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters of the image transformer (embeddings, blocks, norm), the text aligner and the
    token head; the frozen T5 is not part of the generator and never counted."""
    model = build_on_meta(config)
    aligner, head, total = param_count(model.text), param_count(model.head), param_count(model)
    return {"transformer": total - aligner - head, "aligner": aligner, "head": head, "total": total}
