"""GenEval vocabulary and rules, restated for the shapes world.

GenEval (djghosh13/geneval) scores a generated image against a metadata record
``{"tag", "include": [{"class", "count", "color"?, "position"?: [relation, group]}],
"exclude"?: [{"class", "count"}], "prompt"}``. This module holds the phrasing
helpers its prompt generator uses, its relative-position rule and its
include/exclude logic, so that the shapes renderer, the shard writer, the tests
and a programmatic evaluator all agree on what a prompt means. It also has a
tiny colour-matching object finder: in the shapes world objects have exact
palette colours on a grey background, so no detector network is needed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

# GenEval's colour list, in its order. RGB values are ours: every pair is at least
# ~90 apart (Euclidean) and far from the grey background, so nearest-colour matching
# of interior pixels is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (255, 230, 0),
    "green": (20, 160, 40),
    "blue": (20, 60, 220),
    "purple": (130, 30, 180),
    "pink": (255, 110, 200),
    "brown": (115, 65, 15),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# GenEval's default --options position_threshold.
POSITION_THRESHOLD = 0.1


def with_article(word: str) -> str:
    """'a circle', 'an orange circle' — GenEval's vowel rule."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(noun: str) -> str:
    """GenEval's plural rule: 'bus' -> 'buses', otherwise add 's'."""
    return f"{noun}es" if noun.endswith("s") else f"{noun}s"


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A relative to box B ([x0, y0, x1, y1], y grows downwards).

    GenEval's rule: shrink the centre offset by `threshold` × the summed box sizes
    per axis, normalise by the raw offset length, and call a direction when its
    component exceeds 0.5. Overlapping or near-centred boxes get no relation.
    """
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = np.abs(np.diff(a, axis=0))[0] + np.abs(np.diff(b, axis=0))[0]
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


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


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean mask (BFS; images here are small)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(pixels)
    return components


def classify_fill(fill: float) -> str:
    """Shape from the fraction of its bounding box an object covers.

    Square ≈ 1, circle ≈ π/4 ≈ 0.79, triangle ≈ 0.5; interior-only pixel masks
    lose a little at the edges, hence the generous cut points.
    """
    if fill > 0.9:
        return "square"
    if fill > 0.6:
        return "circle"
    return "triangle"


def find_objects(image: Image.Image | np.ndarray, palette: Mapping[str, Sequence[int]] = COLORS,
                 tolerance: float = 45.0, min_area: int = 6) -> list[dict]:
    """Objects in a shapes-world image by colour matching.

    Pixels within `tolerance` of a palette colour belong to that colour (anti-aliased
    edge pixels, being mixtures with the background, fall outside); each 4-connected
    component of at least `min_area` pixels is an object. Returns dicts with "class"
    (from the fill ratio), "color", "box" [x0, y0, x1, y1] (exclusive end) and "area",
    sorted by area, largest first.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels.astype(np.float32)
    names = list(palette)
    refs = np.asarray([palette[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - refs[None, None], axis=-1)
    nearest = dist.argmin(-1)
    close = dist.min(-1) <= tolerance
    found = []
    for index, name in enumerate(names):
        for comp in _components(close & (nearest == index)):
            if len(comp) < min_area:
                continue
            ys, xs = zip(*comp)
            box = [int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1]
            fill = len(comp) / ((box[2] - box[0]) * (box[3] - box[1]))
            found.append({"class": classify_fill(fill), "color": name, "box": box, "area": len(comp)})
    found.sort(key=lambda obj: -obj["area"])
    return found
