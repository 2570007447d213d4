"""`evaluate`: generate GenEval-layout samples from a checkpoint, score shapes-world images, FID.

    python -m fluid_lightning evaluate generate --ckpt last.ckpt --out runs/geneval --per-prompt 4
    python -m fluid_lightning evaluate shapes --images runs/geneval
    python -m fluid_lightning evaluate fid --ckpt last.ckpt --captions coco30k.txt --real coco_val/ \\
        --feature pt_inception-2015-12-05-6726825d.pth --num 30000

The folder `generate` writes is GenEval's, so GenEval's own detector-based evaluate_images.py can
score real-world checkpoints from it too. The drivers from a checkpoint to images (``generate_folder``,
``pipeline_fid``, with ``read_captions`` and ``iter_real_images``) live here, beside their one caller;
``evaluation/`` scores images and never loads a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.pixels import images_to_float, to_pil
from ..data.shapes import evaluation_suite, geneval_metadata
from ..data.webdata import WebDataModule
from ..evaluation.fid import TorchScriptFeatures, make_fid
from ..evaluation.geneval import format_summary, read_metadata, write_geneval_folder
from ..evaluation.shapes import evaluate_folder
from ..pipeline import FluidPipeline
from ..sampling import SamplingSettings
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


def generate_folder(pipe: FluidPipeline, records: Sequence[Mapping], out: str | os.PathLike, per_prompt: int = 4,
                    batch_size: int = 16, sampling: SamplingSettings | None = None, progress: bool = True) -> int:
    """Sample ``per_prompt`` images for every record into GenEval's layout under ``out``; returns the
    number of images. One seeded random stream runs through all batches: a rerun writes the same images."""
    if not records:
        raise ValueError("no prompt records to generate images for")
    jobs = [(i, n) for i in range(len(records)) for n in range(per_prompt)]  # batched across prompts
    for i, record in enumerate(records):
        write_geneval_folder(out, i, record, [])
    batches = pipe.generate_batches([records[i]["prompt"] for i, _ in jobs], batch_size, sampling, progress=progress)
    images = (image for batch in batches for image in to_pil(batch))
    for (i, n), image in zip(jobs, images):
        image.save(Path(out) / f"{i:05d}" / "samples" / f"{n:05d}.png")
    return len(jobs)


def read_captions(path: str) -> list[str]:
    """One caption per line (.txt), or JSON lines with a "caption" or "prompt" field."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not path.endswith(".jsonl"):
        return [line.strip() for line in lines]
    captions = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err}); a .jsonl holds one "
                             '{"caption": ...} per line, a .txt one caption per line') from err
        captions.append(record.get("caption", record.get("prompt")))
    return captions


def iter_real_images(real: str, image_size: int, batch_size: int) -> Iterator[Tensor]:
    """Batches of real images in [0, 1]: from a folder of image files (searched recursively) or
    from WebDataset shards (a folder of .tar files, a glob or a brace pattern)."""
    files = sorted(p for p in Path(real).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if files:
        for start in range(0, len(files), batch_size):
            arrays = []
            for f in files[start:start + batch_size]:
                image = Image.open(f).convert("RGB").resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(image))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
        return
    data = WebDataModule(train_urls=real, image_size=image_size, batch_size=batch_size, num_workers=0,
                         resampled=False, epoch_batches=1, random_crop=False)
    data.setup("fit")
    for batch in data.train_dataloader():
        yield (images_to_float(batch["image"]) + 1) / 2


def pipeline_fid(pipe: FluidPipeline, prompts: list[str], real: str, feature: nn.Module | None = None,
                 image_size: int | None = None, batch_size: int = 16, sampling: SamplingSettings | None = None,
                 progress: bool = True) -> dict:
    """{"fid", "num_images"}: FID of the pipeline's images for ``prompts`` against the ``real`` images
    (the MS-COCO 30K protocol: 30K captions, 256² images), at ``image_size`` (default: the model's).
    ``feature``: the feature net (the standard FID Inception as `TorchScriptFeatures`); without it a
    random conv net is used and the value is not comparable to papers."""
    if not prompts:
        raise ValueError("no captions to generate images for")
    if feature is None:
        warnings.warn("no --feature given: FID uses a random conv net; compare only runs scored the same way",
                      stacklevel=2)
    device = pipe.device
    metric = make_fid(feature).to(device)
    size = image_size or pipe.tokenizer.image_size
    seen = 0
    for images in tqdm(iter_real_images(real, size, batch_size), desc="real", disable=not progress):
        images = images[: len(prompts) - seen]
        metric.update(images.to(device), real=True)
        seen += len(images)
        if seen >= len(prompts):
            break
    if seen < len(prompts):
        warnings.warn(f"{seen} real images for {len(prompts)} generated ones: FID of unequal sets is biased",
                      stacklevel=2)
    for fake in pipe.generate_batches(prompts, batch_size, sampling, progress=progress):
        if fake.shape[-1] != size:
            fake = torch.nn.functional.interpolate(fake, size=(size, size), mode="bicubic").clamp(0, 1)
        metric.update(fake.to(device), real=False)
    return {"fid": float(metric.compute()), "num_images": len(prompts)}
