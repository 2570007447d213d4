"""Drawing a scene: object layout (`layout_boxes`), the renderer (`render_scene`), and the image as the
models' [-1, 1] tensor (`image_to_tensor`)."""

from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..vocabulary import COLORS, relative_position
from .world import BACKGROUND, SceneSpec, geneval_metadata, sample_scene_spec


def _size_range(n_objects: int) -> tuple[float, float]:
    """Object side as a fraction of the image: smaller when more must fit."""
    return {1: (0.30, 0.55), 2: (0.22, 0.40), 3: (0.18, 0.30)}.get(n_objects, (0.16, 0.26))


def _separated(box, others, gap: int) -> bool:
    return all(box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1]
               for o in others)


def layout_boxes(spec: SceneSpec, size: int, rng: random.Random) -> list[list[int]]:
    """Integer boxes [x0, y0, x1, y1) in pixels: inside the image, `gap` pixels apart
    (so colour matching can separate them), and for "position" scenes related by
    exactly the captioned relation under GenEval's rule (no diagonal ambiguity)."""
    gap = max(2, round(size * 0.04))
    low, high = _size_range(len(spec.objects))
    for attempt in range(200):
        shrink = 0.97 ** attempt
        boxes: list[list[int]] = []
        for _ in spec.objects:
            for _ in range(100):
                side = max(4, round(size * rng.uniform(low, high) * shrink))
                x0, y0 = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
                box = [x0, y0, x0 + side, y0 + side]
                if _separated(box, boxes, gap):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) < len(spec.objects):
            continue
        if spec.tag == "position" and relative_position(boxes[0], boxes[1]) != {spec.relation}:
            continue
        return boxes
    raise RuntimeError(f"no layout found for {spec} at size {size}")


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, box: list[int], color, scale: int) -> None:
    x0, y0, x1, y1 = (v * scale for v in box)
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif shape == "triangle":  # apex up, base on the box's bottom edge
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(spec_or_seed: SceneSpec | int, size: int = 64, *, supersample: int = 4,
                 background: tuple[int, int, int] = BACKGROUND, bg_jitter: int = 0,
                 split: str = "train") -> tuple[Image.Image, str, dict]:
    """Draw a scene. An int is a seed for `sample_scene_spec` (with `split`).

    Returns (RGB image of size×size, caption, metadata). Metadata is the GenEval
    record plus "objects" (class, color, rgb, box [x0, y0, x1, y1) in pixels),
    "size", "background" and "spec". Drawn at `supersample`× and box-filtered down,
    so edges are anti-aliased while interiors keep exact palette colours.
    """
    if size < 32:
        raise ValueError("size must be >= 32")
    spec = spec_or_seed if isinstance(spec_or_seed, SceneSpec) else sample_scene_spec(
        random.Random(f"shapes-seed:{spec_or_seed}"), split)
    rng = random.Random(f"layout:{spec.layout_seed}:{size}")
    boxes = layout_boxes(spec, size, rng)
    shade = rng.randint(-bg_jitter, bg_jitter) if bg_jitter else 0
    bg = tuple(int(np.clip(c + shade, 0, 255)) for c in background)
    canvas = Image.new("RGB", (size * supersample, size * supersample), bg)
    draw = ImageDraw.Draw(canvas)
    for (shape, color), box in zip(spec.objects, boxes):
        _draw_object(draw, shape, box, COLORS[color], supersample)
    image = canvas.resize((size, size), Image.Resampling.BOX) if supersample > 1 else canvas
    meta = geneval_metadata(spec)
    meta["objects"] = [{"class": s, "color": c, "rgb": list(COLORS[c]), "box": b}
                       for (s, c), b in zip(spec.objects, boxes)]
    meta.update(size=size, background=list(bg), spec=asdict(spec))
    return image, meta["prompt"], meta



def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous float tensor [3, H, W] in [-1, 1].

    Done in numpy: small torch element-wise ops on a strided view cost ~50× more here,
    and with intra-op threads on a busy machine they can take milliseconds each."""
    array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1))
    array *= 1 / 127.5
    array -= 1.0
    return torch.from_numpy(array)

