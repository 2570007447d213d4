"""YAML configs outside the CLI (the `params` command, notebooks, tools): merged and resolved as the
CLI does, with the same arithmetic resolvers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

FLUID_GENERATOR = "fluid_lightning.models.generator.FluidGenerator"


def register_resolvers() -> None:
    """Arithmetic for configs, e.g. grid_size: ${floordiv:${data.init_args.image_size},4}."""
    resolvers = {"floordiv": lambda a, b: int(a) // int(b), "mul": lambda *xs: math.prod(int(x) for x in xs)}
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, fn)


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Merge YAML files (later ones win) and resolve ``${...}`` interpolations."""
    register_resolvers()
    merged = OmegaConf.merge(*(OmegaConf.load(p) for p in paths))
    try:
        return OmegaConf.to_container(merged, resolve=True)
    except InterpolationResolutionError as err:
        raise ValueError(
            f"{paths[-1]}: {err.msg.splitlines()[0]}; compose it with the config that defines the key "
            "(e.g. conf/data/shapes.yaml)"
        ) from err


def load_generator_config(path: str | Path, base: list[str | Path] = ()) -> dict[str, Any]:
    """The ``model.init_args.generator`` entry ({class_path, init_args}) of a YAML config merged over
    ``base`` configs, with ``${...}`` interpolations resolved as the CLI resolves them."""
    config = load_config(*base, path)
    try:
        generator = config["model"]["init_args"]["generator"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} has no model.init_args.generator entry") from err
    if isinstance(generator, dict) and "class_path" not in generator:  # a size overlay read on its own
        generator = {"class_path": FLUID_GENERATOR, "init_args": generator.get("init_args", generator)}
    return generator
