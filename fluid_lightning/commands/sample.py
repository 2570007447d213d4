"""`sample`: images from a checkpoint, one PNG per image plus grid.png and prompts.txt.

    python -m fluid_lightning sample --ckpt runs/quickstart/checkpoints/last.ckpt \\
        --prompt "a photo of a red circle" --per-prompt 4 --out runs/samples
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import FluidPipeline, make_grid, to_pil
from .common import (
    add_device_argument,
    add_sampling_arguments,
    positive_int,
    resolve_device,
    sampling_from_arguments,
)

HELP = "images from a checkpoint: one PNG per image, grid.png and prompts.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt) or a consolidated .safetensors")
    parser.add_argument("--prompt", action="append", required=True, help="a caption; repeat for several")
    parser.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    parser.add_argument("--per-prompt", type=positive_int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    add_device_argument(parser)
    add_sampling_arguments(parser)
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> None:
    pipe = FluidPipeline.from_checkpoint(ns.ckpt, device=resolve_device(ns.device))
    prompts = [p for p in ns.prompt for _ in range(ns.per_prompt)]
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = pipe.generate_batches(prompts, ns.batch_size, sampling_from_arguments(pipe.sampling, ns), progress=True)
    images = [image for batch in batches for image in to_pil(batch)]
    for i, image in enumerate(images):
        image.save(out / f"{i:04d}.png")
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    make_grid(images, columns=ns.per_prompt if ns.per_prompt > 1 else None).save(out / "grid.png")
    print(f"wrote {len(images)} image{'' if len(images) == 1 else 's'} and grid.png to {out}")
