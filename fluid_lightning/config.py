"""YAML configs outside the CLI (notebooks, tools): merged and resolved as the CLI does."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def register_resolvers() -> None:
    """Arithmetic for configs, e.g. grid_size: ${floordiv:${data.init_args.image_size},4}."""
    from omegaconf import OmegaConf

    resolvers = {"floordiv": lambda a, b: int(a) // int(b), "mul": lambda *xs: math.prod(int(x) for x in xs)}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, fn)


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Merge YAML files (later ones win) and resolve ``${...}`` interpolations."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    register_resolvers()
    merged = OmegaConf.merge(*(OmegaConf.load(p) for p in paths))
    try:
        return OmegaConf.to_container(merged, resolve=True)
    except InterpolationResolutionError as err:
        raise ValueError(
            f"{paths[-1]}: {err.msg.splitlines()[0]}; compose it with the config that defines the key "
            "(e.g. conf/data/shapes.yaml)"
        ) from err
