"""`evaluate`: generate GenEval-layout samples from a checkpoint, score shapes-world images, FID.

    python -m fluid_lightning evaluate generate --ckpt last.ckpt --out runs/geneval --per-prompt 4
    python -m fluid_lightning evaluate shapes --images runs/geneval
    python -m fluid_lightning evaluate fid --ckpt last.ckpt --captions coco30k.txt --real coco_val/ \\
        --feature pt_inception-2015-12-05-6726825d.pth --num 30000

The folder `generate` writes is GenEval's, so GenEval's own detector-based evaluate_images.py can
score real-world checkpoints from it too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.shapes import evaluation_suite, geneval_metadata
from ..evaluation.fid import TorchScriptFeatures, pipeline_fid, read_captions
from ..evaluation.geneval import format_summary, generate_folder, read_metadata
from ..evaluation.shapes import evaluate_folder
from ..pipeline import FluidPipeline
from .common import (
    add_device_argument,
    add_sampling_arguments,
    positive_int,
    resolve_device,
    sampling_from_arguments,
)

HELP = "generate GenEval-layout samples, score shapes-world images, FID"
SUITE_PER_TAG = 32  # x 4 images per prompt: >= 128 images per tag, ~1000 in all


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="sample a checkpoint on GenEval prompts into GenEval's layout")
    gen.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt) or a consolidated .safetensors")
    gen.add_argument("--metadata", default=None, help="GenEval prompt records, one JSON per line "
                     "(evaluation_metadata.jsonl); default: the shapes world's evaluation suite")
    gen.add_argument("--min-per-tag", type=int, default=SUITE_PER_TAG,
                     help=f"the suite's prompts repeated until every tag has this many (default {SUITE_PER_TAG})")
    gen.add_argument("--out", required=True, help="output folder: <out>/00000/{metadata.jsonl,samples/00000.png}")
    gen.add_argument("--per-prompt", type=positive_int, default=4, help="images per prompt (GenEval uses 4)")
    _add_generation_arguments(gen)
    gen.set_defaults(run=run_generate)

    shapes = sub.add_parser("shapes", help="score a GenEval-layout folder of shapes-world images")
    shapes.add_argument("--images", required=True, help="folder in GenEval's layout (from `evaluate generate`)")
    shapes.add_argument("--out", default=None, help="per-image JSONL (default: <images>/results.jsonl)")
    shapes.add_argument("--json", action="store_true", help="print the summary as JSON")
    shapes.add_argument("--no-progress", action="store_true")
    shapes.set_defaults(run=run_shapes)

    fid = sub.add_parser("fid", help="FID of a checkpoint's samples for captions vs real images")
    fid.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt) or a consolidated .safetensors")
    fid.add_argument("--captions", required=True, help="captions: .txt (one per line) or .jsonl (caption/prompt)")
    fid.add_argument("--real", required=True, help="real images: a folder of image files, or WebDataset shards")
    fid.add_argument("--feature", default=None,
                     help="TorchScript FID Inception (pt_inception-2015-12-05-6726825d.pth); default: a random "
                          "conv net, not comparable to papers")
    fid.add_argument("--num", type=positive_int, default=None, help="use the first N captions (MS-COCO protocol: 30000)")
    fid.add_argument("--image-size", type=positive_int, default=None, help="compare at this size (default: the model's)")
    _add_generation_arguments(fid)
    fid.set_defaults(run=run_fid)


def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=16)
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    add_sampling_arguments(parser)


def run_generate(ns: argparse.Namespace) -> int:
    if ns.metadata is None:
        records = [geneval_metadata(spec) for spec in evaluation_suite(min_per_tag=ns.min_per_tag)]
    else:
        records = read_metadata(ns.metadata)
        if not records:
            raise ValueError(f"{ns.metadata} holds no prompt records")
    pipe = FluidPipeline.from_checkpoint(ns.ckpt, device=resolve_device(ns.device))
    count = generate_folder(pipe, records, ns.out, ns.per_prompt, ns.batch_size, sampling_from_arguments(pipe.sampling, ns),
                            progress=not ns.no_progress)
    print(f"wrote {count} images in GenEval's layout to {ns.out}")
    return count


def run_shapes(ns: argparse.Namespace) -> dict:
    out = ns.out if ns.out is not None else str(Path(ns.images) / "results.jsonl")
    _, summary = evaluate_folder(ns.images, out=out, progress=not ns.no_progress and not ns.json)
    print(json.dumps(summary, indent=2) if ns.json else format_summary(summary))
    if not ns.json:
        print(f"per-image results: {out}")
    return summary


def run_fid(ns: argparse.Namespace) -> dict:
    prompts = read_captions(ns.captions)[: ns.num]
    if not prompts:
        raise ValueError(f"{ns.captions} holds no captions")
    feature = TorchScriptFeatures(ns.feature, call_kwargs={"return_features": True}) if ns.feature else None
    pipe = FluidPipeline.from_checkpoint(ns.ckpt, device=resolve_device(ns.device))
    result = pipeline_fid(pipe, prompts, ns.real, feature=feature, image_size=ns.image_size,
                          batch_size=ns.batch_size, sampling=sampling_from_arguments(pipe.sampling, ns), progress=not ns.no_progress)
    print(json.dumps(result))
    return result
