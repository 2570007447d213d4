"""`checkpoint consolidate`: a sharded FSDP2 directory or a .ckpt → one .safetensors (weights + config).

    python -m fluid_lightning checkpoint consolidate runs/.../checkpoints/last.ckpt runs/model.safetensors
"""

from __future__ import annotations

import argparse

from ..checkpointing import consolidate

HELP = "checkpoint tools: consolidate a training checkpoint into one .safetensors file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    cons = sub.add_parser("consolidate", help="sharded FSDP2 directory or .ckpt → one .safetensors (weights + config)")
    cons.add_argument("src", help="checkpoint written by `fit` (an FSDP2 directory or a .ckpt file)")
    cons.add_argument("out", help="output .safetensors file")
    cons.set_defaults(run=run_consolidate)


def run_consolidate(ns: argparse.Namespace) -> None:
    out = consolidate(ns.src, ns.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
