"""Argument types and options shared by several commands, the sampling settings' command-line form among them."""

from __future__ import annotations

import argparse
import dataclasses

import torch

from ..sampling import CFG_SCHEDULES, DIFFUSION_SAMPLERS, TIMESTEP_SPACINGS, SamplingSettings


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def resolve_device(device: str | None) -> str:
    """The ``--device`` value checked, or cuda when available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps)") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    return device


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``SamplingSettings`` on the command line. A flag left out keeps the checkpoint's own value."""
    example = SamplingSettings()
    group = parser.add_argument_group("sampling (default: the checkpoint's own settings)")
    group.add_argument("--steps", type=positive_int, help="random order: tokens are revealed over this many steps "
                       f"(e.g. {example.steps}); raster order takes one per token")
    group.add_argument("--cfg", type=float, help=f"classifier-free guidance scale, 1 = off (e.g. {example.cfg})")
    group.add_argument("--cfg-schedule", choices=CFG_SCHEDULES)
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-k", type=positive_int, help="discrete tokens only")
    group.add_argument("--seed", type=int)
    group.add_argument("--no-kv-cache", dest="kv_cache", action="store_const", const=False,
                       help="raster order: recompute the prefix each step")
    group.add_argument("--diffusion-steps", type=positive_int, help="continuous tokens: diffusion steps per token")
    group.add_argument("--diffusion-sampler", choices=DIFFUSION_SAMPLERS,
                       help="continuous tokens: ancestral (ddpm, MAR's) or a fewer-step ODE solver")
    group.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS)
    group.add_argument("--detail-temperature", type=float,
                       help="continuous tokens, ddpm: the temperature of each token's last diffusion steps "
                       "(the --temperature value itself turns it off)")
    group.add_argument("--detail-fraction", type=float,
                       help=f"the fraction of diffusion steps --detail-temperature covers (e.g. {example.detail_fraction})")
    group.add_argument("--refine-passes", type=non_negative_int,
                       help="random order: redraw every token this many times more after the last step (0: off)")
    group.add_argument("--refine-group", type=positive_int,
                       help=f"tokens redrawn together in a refinement pass (e.g. {example.refine_group})")
    group.add_argument("--refine-temperature", type=float,
                       help="random order: the refinement passes' temperature, on every diffusion step of a redrawn "
                       "token (e.g. 0.25; default: the steps' temperatures)")


def sampling_from_arguments(settings: SamplingSettings, ns: argparse.Namespace) -> SamplingSettings:
    """``settings`` with the values given on the command line (``add_sampling_arguments``)."""
    fields = [f.name for f in dataclasses.fields(SamplingSettings)]
    return settings.replace(**{name: getattr(ns, name) for name in fields if getattr(ns, name, None) is not None})
