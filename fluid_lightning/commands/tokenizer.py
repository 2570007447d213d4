"""`tokenizer`: latent statistics, latent caching, reconstruction metrics, export (library code in
``fluid_lightning.tokenizer_tools``, which says what a tokenizer argument may be).

    python -m fluid_lightning tokenizer stats --tokenizer DIR --shapes 2000          # → DIR/latent_stats.json
    python -m fluid_lightning tokenizer cache --tokenizer DIR --shards data/shapes/train --out data/latents/train
    python -m fluid_lightning tokenizer export --ckpt runs/tok/checkpoints/last.ckpt --out tokenizers/mine
    python -m fluid_lightning tokenizer evaluate --tokenizer DIR --shapes 256 --stream val   # PSNR
"""

from __future__ import annotations

import argparse
import json

from ..checkpointing import load
from ..lit.tokenizer_module import TokenizerModule
from ..models.autoencoders import STATS_FILE
from ..tokenizer_tools import (
    cache_latents,
    compute_latent_stats,
    export_tokenizer,
    load_tokenizer,
    reconstruction_metrics,
    shapes_plan,
    shards_plan,
    tokenizer_path,
    write_stats,
)
from .common import add_device_argument, positive_int, resolve_device

HELP = "tokenizer statistics, latent caching, reconstruction metrics, export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (("stats", run_stats, "latent shift/scale over a dataset → latent_stats.json"),
                                  ("cache", run_cache, "encode a dataset to cached-latent shards (resumable)"),
                                  ("evaluate", run_evaluate, "reconstruction PSNR / L1 (VQ: codes in use)")):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("--tokenizer", required=True, help="folder, LDM/SD .ckpt/.safetensors, or TokenizerModule .ckpt")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--shapes", type=positive_int, help="render N shapes scenes (seed, stream below)")
        source.add_argument("--shards", help="image WebDataset shards: folder, brace pattern or glob")
        p.add_argument("--stream", choices=("train", "val"), default="train", help="shapes stream")
        p.add_argument("--seed", type=int, default=0, help="shapes seed (as ShapesDataModule's)")
        p.add_argument("--image-size", type=int, help="override the tokenizer's image size")
        p.add_argument("--group-size", type=int, help="KL: override the latent patch grouping")
        p.add_argument("--batch-size", type=positive_int, default=32)
        add_device_argument(p)
        p.add_argument("--no-progress", action="store_true")
        if name == "stats":
            p.add_argument("--out", help="stats file (default: TOKENIZER/latent_stats.json for a folder)")
            p.add_argument("--max-images", type=int, help="stop after this many images")
            p.add_argument("--scalar", action="store_true", help="one shift/scale for all channels")
            p.add_argument("--no-shift", action="store_true", help="zero shift, scale = 1/RMS (SD/MAR style)")
            p.set_defaults(shard_size=1000)
        elif name == "evaluate":
            p.set_defaults(shard_size=1000)
        else:
            p.add_argument("--out", required=True, help="output folder for the latent shards")
            p.add_argument("--shard-size", type=int, default=1000, help="shapes: samples per output shard")
            p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="continuous latents")
        p.set_defaults(run=func)
    export = subparsers.add_parser("export", help="TokenizerModule checkpoint → tokenizer folder")
    export.add_argument("--ckpt", required=True)
    export.add_argument("--out", required=True)
    export.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA copy")
    export.set_defaults(run=run_export)


def _tokenizer_and_plan(ns: argparse.Namespace):
    tokenizer = load_tokenizer(ns.tokenizer, image_size=ns.image_size,
                               **({"group_size": ns.group_size} if ns.group_size else {}))
    tokenizer = tokenizer.to(resolve_device(ns.device)).eval().requires_grad_(False)
    if ns.shards:
        plan = shards_plan(ns.shards, tokenizer.image_size)
    else:
        plan = shapes_plan(ns.shapes, tokenizer.image_size, seed=ns.seed, stream=ns.stream,
                           shard_size=ns.shard_size)
    return tokenizer, plan


def run_stats(ns: argparse.Namespace) -> dict:
    path = tokenizer_path(ns.tokenizer)
    out = ns.out or (path / STATS_FILE if path.is_dir() else None)
    if out is None:  # checked before the work, not after it
        raise ValueError("--out is required when the tokenizer is not a folder")
    tokenizer, plan = _tokenizer_and_plan(ns)
    stats = compute_latent_stats(tokenizer, plan, ns.batch_size, ns.max_images, per_channel=not ns.scalar,
                                 shift=not ns.no_shift, progress=not ns.no_progress)
    write_stats(out, stats)
    print(f"{stats['num_images']} images: shift={stats['shift']} scale={stats['scale']} -> {out}")
    return stats


def run_cache(ns: argparse.Namespace) -> dict:
    tokenizer, plan = _tokenizer_and_plan(ns)
    info = cache_latents(tokenizer, plan, ns.out, ns.batch_size, ns.dtype, progress=not ns.no_progress)
    print(f"written: {info['written']} samples; {info['skipped_shards']} shards already done -> {ns.out}")
    return info


def run_evaluate(ns: argparse.Namespace) -> dict:
    tokenizer, plan = _tokenizer_and_plan(ns)
    metrics = reconstruction_metrics(tokenizer, plan, ns.batch_size, progress=not ns.no_progress)
    print(json.dumps(metrics))
    return metrics


def run_export(ns: argparse.Namespace) -> None:
    module = load(TokenizerModule, ns.ckpt)
    tokenizer = module.tokenizer if ns.no_ema else module.sampling_tokenizer
    out = export_tokenizer(tokenizer, ns.out)
    print(f"exported to {out}")
    scale, shift = getattr(tokenizer, "latent_scale", None), getattr(tokenizer, "latent_shift", None)
    if scale is not None and bool((scale == 1).all() and (shift == 0).all()):
        print(f"its latent statistics are the identity until `python -m fluid_lightning tokenizer stats --tokenizer "
              f"{out} --shapes 2000` (or --shards) measures them")
