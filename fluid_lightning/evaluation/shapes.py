"""The shapes scorer: GenEval's judging with classical image analysis as the detector.

GenEval detects objects with a network; for the shapes world the detector is ``find_objects``
(background from the border, connected components, anti-aliasing-aware coverage, shape from
geometry, colour from the palette), so it needs no weights and works on images the renderer did
not make (other sizes, noise, resizing). ``find_shapes`` drops what cannot be a shapes-world object
and refuses noise images (GenEval's detector finds nothing confident in noise); ``evaluate_image``
judges one image against its record with GenEval's rules (``evaluation.geneval``).

    results, summary = evaluate_folder("samples/", out="samples/results.jsonl")
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.shapes import MAX_COUNT
from ..data.vocabulary import COLORS
from .geneval import evaluate_objects, iter_geneval_folder, summarize

# Colour noise (an untrained model's samples) holds 20-30 components above find_objects' 0.15% floor,
# and a prompt only asks that one of them be, e.g., a circle: these refuse such images. Thresholds are set by what the renderer
# (fluid_lightning/data/shapes/) can draw; benchmarks/eval_shapes_accuracy.py measures them.
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


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean mask: (labels with 0 = background, count).

    Works on horizontal runs with union-find, so the Python loop runs once per run, not per
    pixel (a few hundred runs for a 256² shapes image); scipy is not a dependency."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # same row-major order as the starts
    parent = list(range(len(starts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # the runs of row r - 1 are runs[prev_first[i]:prev_last[i]] for a run i in row r
    prev_first = np.searchsorted(rows_s, rows_s - 1, side="left")
    prev_last = np.searchsorted(rows_s, rows_s - 1, side="right")
    for i in range(len(starts)):
        for j in range(prev_first[i], prev_last[i]):  # overlapping columns touch 4-connectedly
            if starts[j] < ends[i] and starts[i] < ends[j]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    labels = np.zeros((height, width), dtype=np.int32)
    roots: dict[int, int] = {}
    for i in range(len(starts)):
        label = roots.setdefault(find(i), len(roots) + 1)
        labels[rows_s[i], starts[i]:ends[i]] = label
    return labels, len(roots)


def estimate_background(pixels: np.ndarray, ring: int = 2) -> tuple[np.ndarray, float]:
    """Background colour and per-channel noise from the image border.

    The median of the outer `ring` pixels ignores objects that touch the border (as long as
    they cover less than half of it); the noise is the border's median absolute deviation
    scaled to a Gaussian sigma."""
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    sigma = float(1.4826 * np.median(np.abs(border - background)))
    return background, sigma


# Shape prototypes in (fill of the bounding box, max radius / equal-area radius). The second
# feature is rotation invariant: disc 1, square √(π/2) ≈ 1.25, apex-up triangle ≈ 1.67.
SHAPE_PROTOTYPES = {"circle": (np.pi / 4, 1.0), "square": (1.0, 1.2533), "triangle": (0.5, 1.67)}
_FEATURE_SCALE = (0.12, 0.12)  # typical feature error on small, noisy masks


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(fill, radius ratio) of a boolean object mask (see SHAPE_PROTOTYPES)."""
    ys, xs = np.nonzero(mask)
    area = len(xs)
    fill = area / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    # Pixel centres sit ~half a pixel inside the true outline: add it back before comparing.
    reach = np.sqrt((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2).max() + 0.5
    return float(fill), float(reach / np.sqrt(area / np.pi))


def classify_shape(mask: np.ndarray) -> str:
    """Nearest prototype in (fill, radius ratio) space."""
    features = np.asarray(shape_features(mask))
    scores = {name: float((((features - proto) / _FEATURE_SCALE) ** 2).sum())
              for name, proto in SHAPE_PROTOTYPES.items()}
    return min(scores, key=scores.get)


def _nearest_colors(rgb: np.ndarray, palette: Mapping[str, Sequence[int]]) -> list[str]:
    """Palette name nearest to each row of `rgb` [N, 3]."""
    names = list(palette)
    refs = np.asarray([palette[n] for n in names], dtype=np.float32)
    nearest = np.linalg.norm(rgb[:, None, :] - refs[None], axis=-1).argmin(-1)
    return [names[i] for i in nearest]


def find_objects(image: Image.Image | np.ndarray, palette: Mapping[str, Sequence[int]] = COLORS,
                 min_contrast: float = 40.0, min_area: int | None = None) -> list[dict]:
    """Objects in a shapes-world image by classical segmentation; no detector network.

    1. Background colour and noise from the image border (`estimate_background`). (No
       denoising blur: at 32 px it bridges the 2-pixel gaps between objects.)
    2. Foreground: pixels farther than max(`min_contrast`/2, 4.5σ) from the background;
       4-connected components of it are object candidates.
    3. A candidate whose bright core holds two palette colours in force (touching objects)
       is split by colour.
    4. Each object's colour is the median of its core; its coverage α of every pixel is the
       projection onto the background→colour line, so the α ≥ 0.5 mask follows the true
       outline even through anti-aliasing, resizing and blur.
    5. Class from the mask's geometry (`classify_shape`), colour name = nearest palette colour.

    Returns dicts with "class", "color", "box" [x0, y0, x1, y1] (exclusive end, pixels) and
    "area", largest first (GenEval checks the first `count` of a class).
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels[..., :3].astype(np.float32)
    height, width = pixels.shape[:2]
    if min_area is None:  # ~0.15% of the image: specks of noise, not objects
        min_area = max(4, round(0.0015 * height * width))
    background, sigma = estimate_background(pixels)
    offset = pixels - background
    distance = np.linalg.norm(offset, axis=-1)
    # 4.5σ: background noise |n| (3 channels) exceeds it with probability ~1e-4 per pixel
    labels, count = label_components(distance > max(min_contrast / 2, 4.5 * sigma))
    found = []
    for index in range(1, count + 1):
        component = labels == index
        if component.sum() < min_area:
            continue
        for part in _split_by_color(component, pixels, distance, background, palette, min_area):
            # α may grow one pixel past the candidate (noisy edges), never into a sibling part
            room = (_dilate(part) & ~component) | part
            obj = _measure(part, room, pixels, offset, distance, background, palette, min_area, min_contrast,
                           sigma)
            if obj is not None:
                found.append(obj)
    found.sort(key=lambda obj: -obj["area"])
    return found


def _box_mean(values: np.ndarray) -> np.ndarray:
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    return sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9.0


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _box_mean(mask.astype(np.float32)) > 0


def _largest_part(mask: np.ndarray) -> np.ndarray | None:
    """The biggest 4-connected part (noise can leave a stray pixel beside an object)."""
    labels, count = label_components(mask)
    if count == 0:
        return None
    return labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1


def _core(mask: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The candidate's most saturated pixels: its interior, free of edge mixtures."""
    values = distance[mask]
    return mask & (distance >= 0.75 * np.percentile(values, 90))


def _split_by_color(component, pixels, distance, background, palette, min_area) -> list[np.ndarray]:
    core = _core(component, distance)
    names = _nearest_colors(pixels[core], palette)
    counts = collections.Counter(names)
    major = [n for n, c in counts.items() if c >= max(min_area, 0.25 * len(names))]
    if len(major) < 2:
        return [component]
    # Give every pixel of the component to the colour whose background→colour line explains it.
    refs = np.asarray([palette[n] for n in major], dtype=np.float32) - background
    offset = pixels[component] - background
    alpha = np.clip(offset @ refs.T / (refs ** 2).sum(-1), 0, 1)
    residual = np.linalg.norm(offset[:, None] - alpha[..., None] * refs[None], axis=-1)
    choice = residual.argmin(-1)
    parts = []
    for k in range(len(major)):
        part = np.zeros_like(component)
        part[component] = choice == k
        if part.sum() >= min_area:  # a colour can be named in the core yet explain no pixel best
            parts.append(part)
    return parts if len(parts) >= 2 else [component]


def _measure(part, room, pixels, offset, distance, background, palette, min_area, min_contrast,
             sigma) -> dict | None:
    core = _core(part, distance)
    color = np.median(pixels[core], axis=0)
    direction = color - background
    contrast_sq = float(direction @ direction)
    if contrast_sq < min_contrast ** 2:
        return None
    alpha = np.where(room, offset @ direction / contrast_sq, 0.0)
    mask = _largest_part(alpha >= 0.5)
    if mask is not None and sigma / np.sqrt(contrast_sq) > 0.03 and min(np.ptp(np.nonzero(mask), axis=1)) >= 12:
        # Noisy coverage makes a ragged outline, and one stray pixel moves the radius feature;
        # a 3×3 mean of α calms it. Only on objects ≥ 12 px: it rounds the corners of small ones.
        mask = _largest_part(_box_mean(alpha) >= 0.5)
    if mask is None or mask.sum() < min_area:
        return None
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return {"class": classify_shape(mask), "color": _nearest_colors(color[None], palette)[0], "box": box,
            "area": int(mask.sum())}


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


def evaluate_folder(images_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                    progress: bool = False) -> tuple[list[dict], dict]:
    """Score every image of a GenEval-layout folder; optionally write GenEval-style JSONL.

    Each line: ``filename`` (path relative to `images_dir`), ``tag``, ``prompt``,
    ``correct``, ``reason``, ``metadata`` (the record as a JSON string, as GenEval writes
    it) and ``details`` (the objects found). Returns (results, `summarize(results)`)."""
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
