"""The evaluation prompts: every tag's scenes, the compositional (held-out) ones included."""

from __future__ import annotations

import random

from ..vocabulary import COLORS, RELATIONS
from .world import MAX_COUNT, SHAPES, SceneSpec, draw_spec, is_heldout


def evaluation_suite(n_color_attr: int = 40, seed: int = 0, min_per_tag: int = 0) -> list[SceneSpec]:
    """The evaluation prompts: every single_object, two_object, counting, colors and
    (uncoloured, GenEval-style) position prompt, plus `n_color_attr` color_attr prompts,
    half of them naming a held-out colour×shape pair. Unnamed colours are arbitrary.

    `min_per_tag`: repeat each tag's prompts (all of them, the same number of times) until the tag
    has at least this many records, for steadier per-tag scores: the suite has only 3 single_object
    and 6 two_object prompts."""
    rng = random.Random(f"suite:{seed}")
    specs: list[SceneSpec] = []

    def add(tag, objects, named=False, relation=None):
        specs.append(SceneSpec(tag, tuple(objects), named, relation, rng.getrandbits(31)))

    def any_color():
        return rng.choice(list(COLORS))

    for shape in SHAPES:
        add("single_object", [(shape, any_color())])
    for a in SHAPES:
        for b in SHAPES:
            if a != b:
                add("two_object", [(a, any_color()), (b, any_color())])
    for shape in SHAPES:
        for count in range(2, MAX_COUNT + 1):
            add("counting", [(shape, any_color()) for _ in range(count)])
    for shape in SHAPES:
        for color in COLORS:
            add("colors", [(shape, color)], named=True)
    for a in SHAPES:
        for relation in RELATIONS:
            for b in SHAPES:
                if a != b:
                    add("position", [(a, any_color()), (b, any_color())], relation=relation)
    wanted = {True: n_color_attr // 2, False: n_color_attr - n_color_attr // 2}
    seen = set()
    while any(wanted.values()):
        spec = draw_spec(rng, "color_attr", "any")
        held = is_heldout(spec)
        if wanted[held] and spec.objects not in seen:
            seen.add(spec.objects)
            wanted[held] -= 1
            specs.append(spec)
    by_tag: dict[str, list[SceneSpec]] = {}
    for spec in specs:
        by_tag.setdefault(spec.tag, []).append(spec)
    return [spec for group in by_tag.values() for spec in group * max(1, -(-min_per_tag // len(group)))]
