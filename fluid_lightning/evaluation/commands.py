"""`evaluate` subcommands: generate GenEval-layout samples from a checkpoint, score them.

`add_evaluate_commands(subparsers)` registers ``generate`` and ``shapes`` on an argparse
subparsers object; each sets ``func`` so the caller dispatches with ``ns.func(ns)``:

    python -m fluid_lightning evaluate generate --ckpt last.ckpt \\
        --metadata data/shapes/evaluation_metadata.jsonl --out samples/ --per-prompt 4
    python -m fluid_lightning evaluate shapes --images samples/ --out samples/results.jsonl
    python -m fluid_lightning evaluate fid --ckpt last.ckpt --captions coco30k.txt --real coco_val/ \
        --feature pt_inception-2015-12-05-6726825d.pth --num 30000

The folder `generate` writes is GenEval's, so GenEval's own detector-based
evaluate_images.py can score real-world checkpoints from it too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fluid_lightning.evaluation.shapes_eval import (
    evaluate_folder,
    format_summary,
    read_metadata,
    write_geneval_folder,
)
from fluid_lightning.pipeline import add_sampling_args, positive_int, sampling_kwargs


def generate_samples(ckpt: str, metadata: str, out: str, per_prompt: int = 4, device: str | None = None,
                     progress: bool = True, **sample_kwargs) -> int:
    """Sample `per_prompt` images for every record of a GenEval metadata file into GenEval's
    layout under `out`; returns the number of images. ``sample_kwargs`` go to
    `FluidPipeline.generate_batches` (one seeded generator: a rerun writes the same images)."""
    from fluid_lightning.pipeline import FluidPipeline, default_device, to_pil

    records = read_metadata(metadata)
    if not records:
        raise ValueError(f"{metadata} holds no prompt records")
    pipe = FluidPipeline.from_checkpoint(ckpt, device=default_device(device))
    # (prompt index, sample index) for every image, batched across prompt boundaries
    jobs = [(i, n) for i in range(len(records)) for n in range(per_prompt)]
    for i, record in enumerate(records):
        write_geneval_folder(out, i, record, [])
    batches = pipe.generate_batches([records[i]["prompt"] for i, _ in jobs], progress=progress, **sample_kwargs)
    images = (image for batch in batches for image in to_pil(batch))
    for (i, n), image in zip(jobs, images):
        image.save(Path(out) / f"{i:05d}" / "samples" / f"{n:05d}.png")
    return len(jobs)


def _run_generate(args: argparse.Namespace) -> int:
    count = generate_samples(args.ckpt, args.metadata, args.out, per_prompt=args.per_prompt, device=args.device,
                             progress=not args.no_progress, **sampling_kwargs(args))
    print(f"wrote {count} images in GenEval's layout to {args.out}")
    return count


def _run_shapes(args: argparse.Namespace) -> dict:
    out = args.out if args.out is not None else str(Path(args.images) / "results.jsonl")
    _, summary = evaluate_folder(args.images, out=out, progress=not args.no_progress and not args.json)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if not args.json:
        print(f"per-image results: {out}")
    return summary


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


def iter_real_images(real: str, image_size: int, batch_size: int):
    """Batches of real images in [0, 1]: from a folder of image files (searched recursively) or
    from WebDataset shards (a folder of .tar files, a glob or a brace pattern)."""
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(p for p in Path(real).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if files:
        for start in range(0, len(files), batch_size):
            arrays = []
            for f in files[start:start + batch_size]:
                image = Image.open(f).convert("RGB").resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(image))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
        return
    from fluid_lightning.data.webdata import WebDataModule

    data = WebDataModule(train_urls=real, image_size=image_size, batch_size=batch_size, num_workers=0,
                         resampled=False, epoch_batches=1, random_crop=False)
    data.setup("fit")
    for batch in data.train_dataloader():
        yield (batch["image"] + 1) / 2


def fid_from_checkpoint(ckpt: str, captions: str, real: str, feature: str | None = None, num_images: int | None = None,
                        image_size: int | None = None, device: str | None = None, progress: bool = True,
                        **sample_kwargs) -> dict:
    """{"fid", "num_images"}: FID of the images generated for ``captions`` (``num_images`` of them)
    against the ``real`` images (the MS-COCO 30K protocol: 30K captions, 256² images). ``feature``: a TorchScript feature net (the standard FID
    Inception); without it a random conv net is used and the value is not comparable to papers."""
    import warnings

    import torch
    from tqdm.auto import tqdm

    from fluid_lightning.evaluation.fid import TorchScriptFeatures, make_fid
    from fluid_lightning.pipeline import FluidPipeline, default_device

    prompts = read_captions(captions)[:num_images]
    if not prompts:
        raise ValueError(f"{captions} holds no captions")
    if feature is None:
        warnings.warn("no --feature given: FID uses a random conv net; compare only runs scored the same way",
                      stacklevel=2)
    device = default_device(device)
    metric = make_fid(TorchScriptFeatures(feature, call_kwargs={"return_features": True}) if feature else None).to(device)
    pipe = FluidPipeline.from_checkpoint(ckpt, device=device)
    batch_size = sample_kwargs.get("batch_size", 16)
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
    for fake in pipe.generate_batches(prompts, progress=progress, **sample_kwargs):
        if fake.shape[-1] != size:
            fake = torch.nn.functional.interpolate(fake, size=(size, size), mode="bicubic").clamp(0, 1)
        metric.update(fake.to(device), real=False)
    return {"fid": float(metric.compute()), "num_images": len(prompts)}


def _run_fid(args: argparse.Namespace) -> dict:
    result = fid_from_checkpoint(args.ckpt, args.captions, args.real, feature=args.feature, num_images=args.num,
                                image_size=args.image_size, device=args.device, progress=not args.no_progress,
                                **sampling_kwargs(args))
    print(json.dumps(result))
    return result


def add_evaluate_commands(subparsers) -> None:
    """Register `generate`, `shapes` and `fid` on an `ArgumentParser.add_subparsers()` object."""
    gen = subparsers.add_parser("generate", help="sample a checkpoint on GenEval prompts into GenEval's layout")
    gen.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt)")
    gen.add_argument("--metadata", required=True,
                     help="GenEval prompt records, one JSON per line (evaluation_metadata.jsonl)")
    gen.add_argument("--out", required=True, help="output folder: <out>/00000/{metadata.jsonl,samples/00000.png}")
    gen.add_argument("--per-prompt", type=positive_int, default=4, help="images per prompt (GenEval uses 4)")
    add_sampling_args(gen)
    gen.add_argument("--no-progress", action="store_true")
    gen.set_defaults(func=_run_generate)

    shapes = subparsers.add_parser("shapes", help="score a GenEval-layout folder of shapes-world images")
    shapes.add_argument("--images", required=True, help="folder in GenEval's layout (from `evaluate generate`)")
    shapes.add_argument("--out", default=None, help="per-image JSONL (default: <images>/results.jsonl)")
    shapes.add_argument("--json", action="store_true", help="print the summary as JSON")
    shapes.add_argument("--no-progress", action="store_true")
    shapes.set_defaults(func=_run_shapes)

    fid = subparsers.add_parser("fid", help="FID of a checkpoint's samples for captions vs real images")
    fid.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt)")
    fid.add_argument("--captions", required=True, help="captions: .txt (one per line) or .jsonl (caption/prompt)")
    fid.add_argument("--real", required=True, help="real images: a folder of image files, or WebDataset shards")
    fid.add_argument("--feature", default=None,
                     help="TorchScript FID Inception (pt_inception-2015-12-05-6726825d.pth); default: a random "
                          "conv net, not comparable to papers")
    fid.add_argument("--num", type=positive_int, default=None, help="use the first N captions (MS-COCO protocol: 30000)")
    fid.add_argument("--image-size", type=int, default=None, help="compare at this size (default: the model's)")
    add_sampling_args(fid)
    fid.add_argument("--no-progress", action="store_true")
    fid.set_defaults(func=_run_fid)
