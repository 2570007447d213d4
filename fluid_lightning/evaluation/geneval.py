"""GenEval's format and rules (djghosh13/geneval), for any detector.

A record ``{"tag", "include": [{"class", "count", "color"?, "position"?: [relation, group]}],
"exclude"?: [{"class", "count"}], "prompt"}`` says what an image must show; ``evaluate_objects``
applies GenEval's include/exclude logic to detected objects. Folders follow GenEval's layout
(``DIR/<00000>/metadata.jsonl`` + ``DIR/<00000>/samples/<0000>.png``), and ``summarize`` /
``format_summary`` are its ``summary_scores.py``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.vocabulary import TAGS, relative_position

_SAMPLE_NAME = re.compile(r"^\d+\.png$")  # GenEval's evaluate_images.py accepts these names


def evaluate_objects(metadata: Mapping, objects: Sequence[Mapping]) -> tuple[bool, list[str]]:
    """Apply GenEval's include/exclude logic to found objects.

    `objects`: dicts with "class", "box" and optionally "color", in detection order
    (GenEval checks colour/position on the first `count` objects of a class).
    Where GenEval asks CLIP for a colour we use the object's "color" field.
    Returns (correct, reasons for failure).
    """
    by_class: dict[str, list[Mapping]] = {}
    for obj in objects:
        by_class.setdefault(obj["class"], []).append(obj)
    correct, reasons, matched_groups = True, [], []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = by_class.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        if matched and "color" in req:
            n_color = sum(obj.get("color") == req["color"] for obj in found)
            if n_color < count:
                matched = False
                reasons.append(f"expected {req['color']} {name}>={count}, found {n_color}")
        if matched and "position" in req:
            relation, group = req["position"]
            targets = matched_groups[group]
            if targets is None:
                matched = False
                reasons.append(f"no target for {name} to be {relation}")
            else:
                for obj in found:
                    for target in targets:
                        found_rels = relative_position(obj["box"], target["box"])
                        if relation not in found_rels:
                            matched = False
                            reasons.append(f"expected {name} {relation} target, found {sorted(found_rels)}")
                            break
                    if not matched:
                        break
        correct = correct and matched
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        n_found = len(by_class.get(req["class"], []))
        if n_found >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n_found}")
    return correct, reasons


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
