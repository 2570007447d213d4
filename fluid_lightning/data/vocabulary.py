"""The shapes world's vocabulary, in GenEval's terms (djghosh13/geneval): its colour list, relations,
tags and phrasing rules, and its relative-position rule, which the renderer uses to lay out scenes
and the scorer to judge them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
