"""How often the shapes evaluator agrees with the truth.

    python benchmarks/eval_shapes_accuracy.py [--n 300]

Three numbers per condition, on the evaluation suite plus `n` training-stream scenes:
- renderer: images drawn from the metadata they are judged against → fraction judged correct;
- perturbed: the same after noise, resizing or JPEG → fraction judged correct;
- wrong: a scene drawn from a mutated spec (other colour, count ±1, opposite relation,
  missing or swapped object/colours) → fraction judged *incorrect*;
- noise: 64 px images with no scene in them (uniform noise, grey + blurred colour noise as an
  untrained model draws, small blurred blobs of random colours, smooth full-frame colour noise),
  judged against every record → fraction judged *incorrect* (must be 1: noise once scored above
  a trained model).
Deterministic: fixed seeds throughout.
"""

from __future__ import annotations

import argparse
import io
import random
import time
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from fluid_lightning.data.shapes import (
    MAX_COUNT,
    SHAPES,
    SceneSpec,
    evaluation_suite,
    geneval_metadata,
    render_scene,
    scene_spec_for_index,
)
from fluid_lightning.data.vocabulary import COLORS
from fluid_lightning.evaluation.shapes import evaluate_image

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def noisy(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def blobs(rng: np.random.Generator, size: int = 64, cells: int = 16, density: float = 0.5) -> Image.Image:
    """Blurred blobs of random colours on grey: a cells×cells grid, `density` of the cells a random
    colour at random opacity, bicubic upsampling to `size`."""
    colors = rng.integers(0, 256, (cells, cells, 3)).astype(np.float32)
    alpha = (rng.random((cells, cells, 1)) < density) * rng.uniform(0.5, 1, (cells, cells, 1))
    small = 128 + alpha * (colors - 128)
    return Image.fromarray(small.round().astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def noise_conditions(rng: np.random.Generator) -> dict:
    """name -> () -> a 64 px image with no scene in it."""
    def grey_noise() -> Image.Image:  # like an untrained model's samples: grey with colour speckle
        pixels = np.clip(128 + rng.normal(0, 48, (64, 64, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.0))

    def smooth_noise() -> Image.Image:  # random colours on an 8×8 grid, bicubic: fills the frame
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)

    return {
        "uniform noise": lambda: Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "grey + blurred colour noise σ=48": grey_noise,
        "blurred blobs, 4 px, 50% of cells": lambda: blobs(rng, cells=16, density=0.5),
        "blurred blobs, 4 px, 25% of cells": lambda: blobs(rng, cells=16, density=0.25),
        "smooth colour noise (8×8 bicubic)": smooth_noise,
        "blurred blobs, 8 px, 50% of cells": lambda: blobs(rng, cells=8, density=0.5),
    }


def conditions(rng: np.random.Generator) -> dict:
    """name -> spec -> image."""
    return {
        "32px": lambda s: render_scene(s, 32)[0],
        "64px": lambda s: render_scene(s, 64)[0],
        "128px": lambda s: render_scene(s, 128)[0],
        "256px": lambda s: render_scene(s, 256)[0],
        "64px bg jitter 40": lambda s: render_scene(s, 64, bg_jitter=40)[0],
        "64px noise σ=8": lambda s: noisy(render_scene(s, 64)[0], 8, rng),
        "128px noise σ=16": lambda s: noisy(render_scene(s, 128)[0], 16, rng),
        "64→100 bilinear": lambda s: render_scene(s, 64)[0].resize((100, 100), Image.Resampling.BILINEAR),
        "64→100 + noise σ=8": lambda s: noisy(render_scene(s, 64)[0].resize((100, 100)), 8, rng),
        "128px JPEG q90": lambda s: jpeg(render_scene(s, 128)[0], 90),
        "64px JPEG q90": lambda s: jpeg(render_scene(s, 64)[0], 90),
    }


def wrong_spec(spec: SceneSpec, rng: random.Random) -> SceneSpec:
    """A spec whose drawing contradicts `spec`'s metadata."""
    objects = list(spec.objects)
    if spec.tag == "counting":
        count = len(objects)
        new = rng.choice([c for c in (count - 1, count + 1) if 1 <= c <= MAX_COUNT])
        return replace(spec, objects=tuple([objects[0]] * new))
    if spec.tag == "position":
        return replace(spec, relation=OPPOSITE[spec.relation])
    if spec.tag in ("colors",):
        shape, color = objects[0]
        return replace(spec, objects=((shape, rng.choice([c for c in COLORS if c != color])),))
    if spec.tag == "color_attr":  # swap the colours between the two objects
        (sa, ca), (sb, cb) = objects
        return replace(spec, objects=((sa, cb), (sb, ca)))
    if spec.tag == "single_object":
        shape, color = objects[0]
        return replace(spec, objects=((rng.choice([s for s in SHAPES if s != shape]), color),))
    # two_object: drop one of the two
    keep = rng.randrange(2)
    return SceneSpec("single_object", (objects[keep],), layout_seed=spec.layout_seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="training-stream scenes added to the suite")
    args = parser.parse_args()
    specs = evaluation_suite() + [scene_spec_for_index(0, i) for i in range(args.n)]
    rng = np.random.default_rng(0)
    print(f"{len(specs)} scenes (evaluation suite + {args.n} training-stream scenes)\n")
    print("| condition | judged correct | ms/image |\n|---|---|---|")
    for name, make in conditions(rng).items():
        start = time.perf_counter()
        correct = sum(evaluate_image(make(s), geneval_metadata(s))["correct"] for s in specs)
        ms = (time.perf_counter() - start) / len(specs) * 1000
        print(f"| {name} | {correct / len(specs):.4f} ({correct}/{len(specs)}) | {ms:.1f} |")
    print("\n| wrong images (drawn from a mutated spec) | judged incorrect |\n|---|---|")
    mutate = random.Random(0)
    for size, perturb in ((64, None), (128, None), (64, "noise σ=8")):
        caught, by_tag = 0, {}
        for spec in specs:
            image = render_scene(wrong_spec(spec, mutate), size)[0]
            if perturb:
                image = noisy(image, 8, rng)
            hit = not evaluate_image(image, geneval_metadata(spec))["correct"]
            caught += hit
            tag = by_tag.setdefault(spec.tag, [0, 0])
            tag[0] += hit
            tag[1] += 1
        label = f"{size}px" + (f" {perturb}" if perturb else "")
        detail = ", ".join(f"{t} {c}/{n}" for t, (c, n) in by_tag.items() if c < n)
        print(f"| {label} | {caught / len(specs):.4f} ({caught}/{len(specs)}){'; misses: ' + detail if detail else ''} |")
    print("\n| noise images, 64 px (no scene) | judged incorrect |\n|---|---|")
    for name, make in noise_conditions(np.random.default_rng(1)).items():
        caught, by_tag = 0, {}
        for spec in specs:
            hit = not evaluate_image(make(), geneval_metadata(spec))["correct"]
            caught += hit
            tag = by_tag.setdefault(spec.tag, [0, 0])
            tag[0] += hit
            tag[1] += 1
        detail = ", ".join(f"{t} {c}/{n}" for t, (c, n) in by_tag.items() if c < n)
        print(f"| {name} | {caught / len(specs):.4f} ({caught}/{len(specs)}){'; misses: ' + detail if detail else ''} |")


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main()
