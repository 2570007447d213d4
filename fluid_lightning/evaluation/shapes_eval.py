"""The shapes evaluator: GenEval's scoring, with classical image analysis as the detector.

GenEval (djghosh13/geneval) reads ``DIR/<00000>/metadata.jsonl`` (one JSON record:
``tag``, ``include``, ``exclude``, ``prompt``) and ``DIR/<00000>/samples/<0000>.png``,
detects objects, judges every image against its record and writes one JSON line per
image; ``summary_scores.py`` then averages per tag and over tags. Here the detector is
`fluid_lightning.data.geneval.find_objects` (background from the border, connected
components, shape from geometry) behind `find_shapes`, which drops what cannot be a
shapes-world object and refuses noise images (GenEval's detector finds nothing
confident in noise), and the judging is `evaluate_objects`, so the rules are the ones
the renderer and its tests already share.

    results, summary = evaluate_folder("samples/", out="samples/results.jsonl")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fluid_lightning.data.geneval import TAGS, estimate_background, evaluate_objects, find_objects
from fluid_lightning.data.shapes import MAX_COUNT

_SAMPLE_NAME = re.compile(r"^\d+\.png$")  # GenEval's evaluate_images.py accepts these names


# Without these, colour noise (an untrained model's samples) scored above a trained model: the
# detector keeps every component >= 0.15% of the image, so noise gives 20-30 specks, and a prompt
# only asks that >= 1 of them be, e.g., a circle. Thresholds are set by what the renderer
# (fluid_lightning/data/shapes.py) can draw; benchmarks/eval_shapes_accuracy.py measures them.
#
# Smallest object: a box side is >= 16% of the image (4 objects) and a triangle fills half its
# box, 1.3% of the image; crowded layouts shrink boxes (0.97 per retry), to 0.6% at the least
# over the benchmark's 412 scenes. Half a percent keeps all of those and drops most noise specks.
MIN_OBJECT_FRACTION = 0.005
# A rendered scene is background plus objects: no non-background pixel lies outside the objects'
# boxes (renders, JPEG q90 and resized copies: < 1% of the image). In colour noise 3-20% does:
# then the image is noise, and what was found in it is noise too.
MAX_STRAY_FRACTION = 0.03
# The renderer draws at most MAX_COUNT objects (GenEval counts up to 4); many more shape-sized
# objects than that are a texture of blobs, not a scene.
MAX_OBJECTS = 2 * MAX_COUNT


def find_shapes(image: Image.Image | np.ndarray, min_contrast: float = 40.0) -> tuple[list[dict], str]:
    """`find_objects`, less what cannot be a shapes-world object: (objects, why the image was
    refused as noise, or "").

    Objects smaller than `MIN_OBJECT_FRACTION` of the image are dropped. The whole image is
    refused (no objects) when more than `MAX_OBJECTS` remain, or when more than
    `MAX_STRAY_FRACTION` of its pixels are foreground (`find_objects`' threshold, with the pixel
    noise from neighbour differences where that is lower) outside the remaining objects' boxes
    (grown by a pixel for anti-aliased and blurred edges)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels[..., :3].astype(np.float32)
    height, width = pixels.shape[:2]
    objects = [obj for obj in find_objects(pixels, min_contrast=min_contrast)
               if obj["area"] >= MIN_OBJECT_FRACTION * height * width]
    if len(objects) > MAX_OBJECTS:
        return [], f"noise: {len(objects)} shape-sized objects (a scene has at most {MAX_COUNT})"
    background, sigma = estimate_background(pixels)
    # The border's σ is the pixel noise when the border is background, as the renderer keeps it; noise
    # blobs on the border inflate it, and with it find_objects' threshold. Neighbouring pixels differ
    # by √2·σ of pixel noise but hardly at all inside flat backgrounds and objects: take the smaller.
    step = np.abs(np.diff(pixels, axis=1)).ravel()
    sigma = min(sigma, float(1.4826 * np.median(step)) / np.sqrt(2))
    foreground = np.linalg.norm(pixels - background, axis=-1) > max(min_contrast / 2, 4.5 * sigma)
    for x0, y0, x1, y1 in (obj["box"] for obj in objects):
        foreground[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = False
    stray = float(foreground.mean())
    if stray > MAX_STRAY_FRACTION:
        return [], f"noise: {stray:.1%} of the image is neither background nor an object"
    return objects, ""


def evaluate_image(image: Image.Image | np.ndarray, metadata: Mapping) -> dict:
    """Judge one image against its GenEval record.

    Returns {"tag", "prompt", "correct", "reason" (GenEval joins its failure reasons with
    newlines; empty when correct), "objects" (what was found; none in an image refused as
    noise, whose reason then starts with "noise: ")}."""
    objects, noise = find_shapes(image)
    correct, reasons = evaluate_objects(metadata, objects)
    if noise:
        reasons.insert(0, noise)
    return {"tag": metadata.get("tag"), "prompt": metadata.get("prompt"), "correct": bool(correct),
            "reason": "\n".join(reasons), "objects": objects}


def score_images(images: Sequence[Image.Image | np.ndarray], metadatas: Sequence[Mapping]) -> list[dict]:
    """Judge in-memory images (one record per image), e.g. inside a training callback."""
    if len(images) != len(metadatas):
        raise ValueError(f"{len(images)} images but {len(metadatas)} metadata records")
    return [{"filename": f"{i:05d}", **evaluate_image(image, meta)}
            for i, (image, meta) in enumerate(zip(images, metadatas))]


def read_metadata(path: str | os.PathLike) -> list[dict]:
    """GenEval prompt records from a JSONL file (ours: ``evaluation_metadata.jsonl``; GenEval's
    ``prompts/evaluation_metadata.jsonl`` has the same format). Blank lines are skipped."""
    with open(path, encoding="utf-8") as fp:
        return [json.loads(line) for line in fp if line.strip()]


def iter_geneval_folder(images_dir: str | os.PathLike) -> Iterable[tuple[Path, dict]]:
    """(image path, metadata) for every sample in GenEval's layout, in folder then file order.

    Folders whose name is not all digits, or without ``metadata.jsonl``, are skipped, as in
    GenEval's evaluate_images.py."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}; write one with `evaluate generate`")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            continue
        metadata = json.loads(meta_path.read_text(encoding="utf-8").strip().splitlines()[0])
        samples = folder / "samples"
        names = sorted(p.name for p in samples.iterdir()) if samples.is_dir() else []
        for name in names:
            if _SAMPLE_NAME.match(name):
                yield samples / name, metadata


def write_geneval_folder(out_dir: str | os.PathLike, index: int, metadata: Mapping,
                         images: Sequence[Image.Image], start: int = 0) -> Path:
    """Write prompt `index`'s record and images in GenEval's layout; returns its folder.

    Names follow GenEval's generate script: ``{index:05}/metadata.jsonl`` and
    ``samples/{n:05}.png`` (PNG: lossless, so colours survive for the evaluator)."""
    folder = Path(out_dir) / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").write_text(json.dumps(dict(metadata)) + "\n", encoding="utf-8")
    for n, image in enumerate(images, start=start):
        image.save(folder / "samples" / f"{n:05d}.png")
    return folder


def evaluate_folder(images_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                    progress: bool = False) -> tuple[list[dict], dict]:
    """Score every image of a GenEval-layout folder; optionally write GenEval-style JSONL.

    Each line: ``filename`` (path relative to `images_dir`), ``tag``, ``prompt``,
    ``correct``, ``reason``, ``metadata`` (the record as a JSON string, as GenEval writes
    it) and ``details`` (the objects found). Returns (results, `summarize(results)`)."""
    from tqdm.auto import tqdm

    root = Path(images_dir)
    samples = list(iter_geneval_folder(root))
    if not samples:
        raise FileNotFoundError(f"no samples in {root}: expected {root}/00000/metadata.jsonl and "
                                f"{root}/00000/samples/0000.png (GenEval's layout)")
    results = []
    for path, metadata in tqdm(samples, desc="shapes eval", unit="img", disable=not progress):
        with Image.open(path) as image:
            judged = evaluate_image(image.convert("RGB"), metadata)
        results.append({"filename": str(path.relative_to(root)), "tag": judged["tag"],
                        "prompt": judged["prompt"], "correct": judged["correct"], "reason": judged["reason"],
                        "metadata": json.dumps(metadata), "details": judged["objects"]})
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fp:
            for result in results:
                fp.write(json.dumps(result) + "\n")
    return results, summarize(results)


def summarize(results: Sequence[Mapping]) -> dict:
    """GenEval's summary_scores.py as a dict.

    ``tags``: {tag: {"accuracy", "correct", "total"}} in the order tags first appear;
    ``overall``: mean of the per-tag accuracies (GenEval's headline score);
    ``images`` / ``prompts``: counts; ``correct_images``: fraction of images correct;
    ``correct_prompts``: fraction of prompts with at least one correct image."""
    if not results:
        return {"images": 0, "prompts": 0, "correct_images": 0.0, "correct_prompts": 0.0, "tags": {},
                "overall": 0.0}
    tags: dict[str, dict] = {}
    per_prompt: dict[str, bool] = {}
    for result in results:
        entry = tags.setdefault(result["tag"], {"correct": 0, "total": 0})
        entry["correct"] += int(result["correct"])
        entry["total"] += 1
        key = result.get("metadata") or json.dumps([result["tag"], result["prompt"]])
        per_prompt[key] = per_prompt.get(key, False) or bool(result["correct"])
    for entry in tags.values():
        entry["accuracy"] = entry["correct"] / entry["total"]
    return {
        "images": len(results),
        "prompts": len(per_prompt),
        "correct_images": sum(bool(r["correct"]) for r in results) / len(results),
        "correct_prompts": sum(per_prompt.values()) / len(per_prompt),
        "tags": tags,
        "overall": float(np.mean([entry["accuracy"] for entry in tags.values()])),
    }


def format_summary(summary: Mapping) -> str:
    """The summary as summary_scores.py prints it."""
    lines = [
        "Summary",
        "=======",
        f"Total images: {summary['images']}",
        f"Total prompts: {summary['prompts']}",
        f"% correct images: {summary['correct_images']:.2%}",
        f"% correct prompts: {summary['correct_prompts']:.2%}",
        "",
        "Task breakdown",
        "==============",
    ]
    ordered = [t for t in TAGS if t in summary["tags"]] + [t for t in summary["tags"] if t not in TAGS]
    for tag in ordered:
        entry = summary["tags"][tag]
        lines.append(f"{tag:<16} = {entry['accuracy']:.2%} ({entry['correct']} / {entry['total']})")
    lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
    return "\n".join(lines)
