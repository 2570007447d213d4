"""`data` subcommands: build shapes-world shards and shard real image folders.

`add_data_commands(subparsers)` registers ``shapes`` and ``shards`` on an argparse
subparsers object; each sets ``func`` (called with the parsed namespace) so the
caller dispatches with ``args.func(args)``. The plain functions `build_shapes` and
`build_shards` do the work and return the stats they print.
"""

from __future__ import annotations

import argparse
import json

from fluid_lightning.data.shards import write_image_shards, write_shapes_shards


def build_shapes(out: str, n: int, size: int = 64, seed: int = 0, val_n: int = 0, shard_size: int = 1000,
                 image_format: str = "png", bg_jitter: int = 0, progress: bool = True) -> dict:
    """Render `n` train and `val_n` val shapes scenes to shards under `out`, plus
    `out/evaluation_metadata.jsonl`; print and return the counts."""
    stats = write_shapes_shards(out, n=n, val_n=val_n, size=size, seed=seed, shard_size=shard_size,
                                image_format=image_format, bg_jitter=bg_jitter, progress=progress)
    for stream in ("train", "val"):
        if stream in stats:
            info = stats[stream]
            print(f"{stream}: {info['written']} samples in {len(info['shards'])} shards -> {info['urls']}")
    print(f"evaluation prompts: {stats['evaluation_prompts']} -> {out}/evaluation_metadata.jsonl")
    return stats


def build_shards(source: str, out: str, shard_size: int = 1000, quality: int = 95, progress: bool = True) -> dict:
    """Shard a folder (image + same-stem .txt) or a JSONL ({"image", "caption"}); print and
    return the counts."""
    stats = write_image_shards(source, out, shard_size=shard_size, quality=quality, progress=progress)
    print(f"written: {stats['written']} samples in {len(stats['shards'])} shards -> {stats['urls']}")
    print(f"skipped: {json.dumps(stats['skipped'])}")
    return stats


def _run_shapes(args: argparse.Namespace) -> dict:
    return build_shapes(args.out, args.n, size=args.size, seed=args.seed, val_n=args.val_n,
                        shard_size=args.shard_size, image_format=args.format, bg_jitter=args.bg_jitter,
                        progress=not args.no_progress)


def _run_shards(args: argparse.Namespace) -> dict:
    return build_shards(args.source, args.out, shard_size=args.shard_size, quality=args.quality,
                        progress=not args.no_progress)


def add_data_commands(subparsers) -> None:
    """Register `shapes` and `shards` on an `ArgumentParser.add_subparsers()` object."""
    shapes = subparsers.add_parser("shapes", help="render shapes-world train/val shards + GenEval metadata")
    shapes.add_argument("--out", required=True, help="output folder (train/, val/, evaluation_metadata.jsonl)")
    shapes.add_argument("--n", type=int, required=True, help="number of training samples")
    shapes.add_argument("--val-n", type=int, default=0, help="number of validation samples")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (>= 32)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shapes.add_argument("--format", choices=("png", "jpg"), default="png", help="png is lossless")
    shapes.add_argument("--bg-jitter", type=int, default=0, help="max background grey shift")
    shapes.add_argument("--no-progress", action="store_true")
    shapes.set_defaults(func=_run_shapes)

    shards = subparsers.add_parser("shards", help="shard an image folder or JSONL (img2dataset layout)")
    shards.add_argument("--from", dest="source", required=True,
                        help="folder of images with same-stem .txt captions, or a .jsonl of {image, caption}")
    shards.add_argument("--out", required=True)
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shards.add_argument("--quality", type=int, default=95, help="JPEG quality for non-JPEG inputs")
    shards.add_argument("--no-progress", action="store_true")
    shards.set_defaults(func=_run_shards)
