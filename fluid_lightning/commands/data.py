"""`data`: shapes-world shards, and shards of your own images + captions (see data/README.md).

    python -m fluid_lightning data shapes --out data/shapes --n 20000 --val-n 500
    python -m fluid_lightning data shards --from my_images/ --out data/mine
"""

from __future__ import annotations

import argparse
import json

from ..data.shards import write_image_shards, write_shapes_shards
from .common import positive_int

HELP = "build datasets: shapes-world shards, or shards from an image folder / JSONL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="render shapes-world train/val shards + GenEval metadata")
    shapes.add_argument("--out", required=True, help="output folder (train/, val/, evaluation_metadata.jsonl)")
    shapes.add_argument("--n", type=positive_int, required=True, help="number of training samples")
    shapes.add_argument("--val-n", type=int, default=0, help="number of validation samples")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (>= 32)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    shapes.add_argument("--format", choices=("png", "jpg"), default="png", help="png is lossless")
    shapes.add_argument("--bg-jitter", type=int, default=0, help="max background grey shift")
    shapes.add_argument("--no-progress", action="store_true")
    shapes.set_defaults(run=run_shapes)

    shards = sub.add_parser("shards", help="shard an image folder or JSONL (img2dataset layout)")
    shards.add_argument("--from", dest="source", required=True,
                        help="folder of images with same-stem .txt captions, or a .jsonl of {image, caption}")
    shards.add_argument("--out", required=True)
    shards.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    shards.add_argument("--quality", type=int, default=95, help="JPEG quality for non-JPEG inputs")
    shards.add_argument("--no-progress", action="store_true")
    shards.set_defaults(run=run_shards)


def run_shapes(ns: argparse.Namespace) -> dict:
    """Render ``n`` train and ``val_n`` val scenes to shards under ``out``, plus ``out/evaluation_metadata.jsonl``."""
    stats = write_shapes_shards(ns.out, n=ns.n, val_n=ns.val_n, size=ns.size, seed=ns.seed, shard_size=ns.shard_size,
                                image_format=ns.format, bg_jitter=ns.bg_jitter, progress=not ns.no_progress)
    for stream in ("train", "val"):
        if stream in stats:
            info = stats[stream]
            print(f"{stream}: {info['written']} samples in {len(info['shards'])} shards -> {info['urls']}")
    print(f"evaluation prompts: {stats['evaluation_prompts']} -> {ns.out}/evaluation_metadata.jsonl")
    return stats


def run_shards(ns: argparse.Namespace) -> dict:
    """Shard a folder (image + same-stem .txt) or a JSONL ({"image", "caption"})."""
    stats = write_image_shards(ns.source, ns.out, shard_size=ns.shard_size, quality=ns.quality,
                               progress=not ns.no_progress)
    print(f"written: {stats['written']} samples in {len(stats['shards'])} shards -> {stats['urls']}")
    print(f"skipped: {json.dumps(stats['skipped'])}")
    return stats
