"""The shapes evaluator: GenEval's scoring, with classical image analysis as the detector.

GenEval (djghosh13/geneval) reads ``DIR/<00000>/metadata.jsonl`` (one JSON record:
``tag``, ``include``, ``exclude``, ``prompt``) and ``DIR/<00000>/samples/<0000>.png``,
detects objects, judges every image against its record and writes one JSON line per
image; ``summary_scores.py`` then averages per tag and over tags. Here the detector is
`fluid_lightning.data.geneval.find_objects` (background from the border, connected
components, shape from geometry) and the judging is `evaluate_objects`, so the rules
are the ones the renderer and its tests already share.

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

from fluid_lightning.data.geneval import TAGS, evaluate_objects, find_objects

_SAMPLE_NAME = re.compile(r"^\d+\.png$")  # GenEval's evaluate_images.py accepts these names


def evaluate_image(image: Image.Image | np.ndarray, metadata: Mapping) -> dict:
    """Judge one image against its GenEval record.

    Returns {"tag", "prompt", "correct", "reason" (GenEval joins its failure reasons with
    newlines; empty when correct), "objects" (what was found)}."""
    objects = find_objects(image)
    correct, reasons = evaluate_objects(metadata, objects)
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
