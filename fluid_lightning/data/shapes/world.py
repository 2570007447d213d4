"""The shapes world's scenes: what a scene holds (`SceneSpec`), how one is drawn at random for a
tag and split, its caption and GenEval metadata, and which prompts are held out of training."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..vocabulary import (
    COLORS,
    NUMBER_WORDS,
    RELATIONS,
    TAGS,
    plural,
    with_article,
)

SHAPES = ("circle", "square", "triangle")
BACKGROUND = (128, 128, 128)
MAX_COUNT = 4  # GenEval counts 2..4 in its counting tag

# Held out of training. Each shape loses two colours and each colour at most one shape,
# so every colour and every shape is still seen in training.
HELDOUT_COLOR_SHAPES = frozenset({
    ("red", "triangle"), ("pink", "triangle"),
    ("blue", "circle"), ("brown", "circle"),
    ("green", "square"), ("white", "square"),
})
# (A, relation, B) for "a photo of a A <relation> a B"; one per relation.
HELDOUT_POSITIONS = frozenset({
    ("triangle", "above", "circle"), ("circle", "left of", "square"),
    ("square", "below", "triangle"), ("square", "right of", "circle"),
})
HELDOUT_COUNTS = frozenset({("triangle", 3), ("circle", 4)})
HELDOUT_TWO_OBJECTS = frozenset({("triangle", "square")})  # ordered, as in the prompt


@dataclass(frozen=True)
class SceneSpec:
    """What to draw. Layout (sizes, positions, background shade) comes from `layout_seed`.

    objects: (shape, colour) of every drawn object; for "position" objects[0] is A and
    objects[1] is B in "A <relation> B". named_colors: the caption names the colours
    (always for colors/color_attr, never for single_object/two_object/counting, either
    way for position).
    """

    tag: str
    objects: tuple[tuple[str, str], ...]
    named_colors: bool = False
    relation: str | None = None
    layout_seed: int = 0


def caption_for(spec: SceneSpec) -> str:
    """GenEval's prompt template for the spec's tag."""
    def noun(i: int) -> str:
        shape, color = spec.objects[i]
        return with_article(f"{color} {shape}" if spec.named_colors else shape)

    if spec.tag in ("single_object", "colors"):
        return f"a photo of {noun(0)}"
    if spec.tag in ("two_object", "color_attr"):
        return f"a photo of {noun(0)} and {noun(1)}"
    if spec.tag == "counting":
        return f"a photo of {NUMBER_WORDS[len(spec.objects)]} {plural(spec.objects[0][0])}"
    if spec.tag == "position":
        return f"a photo of {noun(0)} {spec.relation} {noun(1)}"
    raise ValueError(f"unknown tag {spec.tag!r}")


def geneval_metadata(spec: SceneSpec) -> dict:
    """The GenEval record {tag, include, exclude?, prompt} for a spec."""
    def clause(i: int) -> dict:
        shape, color = spec.objects[i]
        return {"class": shape, "count": 1, **({"color": color} if spec.named_colors else {})}

    meta: dict = {"tag": spec.tag}
    if spec.tag == "counting":
        shape, count = spec.objects[0][0], len(spec.objects)
        meta["include"] = [{"class": shape, "count": count}]
        meta["exclude"] = [{"class": shape, "count": count + 1}]
    elif spec.tag == "position":
        # GenEval lists B first and points A's clause at group 0.
        meta["include"] = [clause(1), {**clause(0), "position": [spec.relation, 0]}]
    else:
        meta["include"] = [clause(i) for i in range(len(spec.objects))]
    meta["prompt"] = caption_for(spec)
    return meta


def is_heldout(spec: SceneSpec) -> bool:
    """Whether the spec's prompt belongs to the held-out evaluation split."""
    shapes = [shape for shape, _ in spec.objects]
    if spec.named_colors and any((c, s) in HELDOUT_COLOR_SHAPES for s, c in spec.objects):
        return True
    if spec.tag == "position":
        return (shapes[0], spec.relation, shapes[1]) in HELDOUT_POSITIONS
    if spec.tag == "counting":
        return (shapes[0], len(shapes)) in HELDOUT_COUNTS
    if spec.tag == "two_object":
        return (shapes[0], shapes[1]) in HELDOUT_TWO_OBJECTS
    return False


def _color_for(rng: random.Random, shape: str, split: str, exclude: tuple[str, ...] = ()) -> str:
    banned = {c for c, s in HELDOUT_COLOR_SHAPES if s == shape} if split == "train" else set()
    return rng.choice([c for c in COLORS if c not in banned and c not in exclude])


def draw_spec(rng: random.Random, tag: str, split: str) -> SceneSpec:
    """A random scene of ``tag``; in the train split no object has a held-out colour×shape pair."""
    layout_seed = rng.getrandbits(31)
    if tag in ("single_object", "colors"):
        shape = rng.choice(SHAPES)
        objects = ((shape, _color_for(rng, shape, split)),)
        return SceneSpec(tag, objects, named_colors=tag == "colors", layout_seed=layout_seed)
    if tag == "counting":
        shape, count = rng.choice(SHAPES), rng.randint(2, MAX_COUNT)
        objects = tuple((shape, _color_for(rng, shape, split)) for _ in range(count))
        return SceneSpec(tag, objects, layout_seed=layout_seed)
    # two distinct classes, as in GenEval; color_attr also wants two distinct colours
    shape_a, shape_b = rng.sample(SHAPES, 2)
    color_a = _color_for(rng, shape_a, split)
    color_b = _color_for(rng, shape_b, split, exclude=(color_a,) if tag == "color_attr" else ())
    objects = ((shape_a, color_a), (shape_b, color_b))
    if tag == "position":
        relation = rng.choice(RELATIONS)
        return SceneSpec(tag, objects, rng.random() < 0.5, relation, layout_seed)
    return SceneSpec(tag, objects, named_colors=tag == "color_attr", layout_seed=layout_seed)


def sample_scene_spec(rng: random.Random, split: str = "train", tags: tuple[str, ...] = TAGS) -> SceneSpec:
    """Draw a random spec. split: "train" (never held out), "heldout" (only held out),
    or "any". Deterministic given the state of `rng`."""
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split must be train|heldout|any, got {split!r}")
    if split == "heldout":
        tags = tuple(t for t in tags if t != "single_object")  # it has no held-out prompts
    for _ in range(10_000):
        spec = draw_spec(rng, rng.choice(tags), split)
        if split == "any" or is_heldout(spec) == (split == "heldout"):
            return spec
    raise RuntimeError(f"could not sample a {split} scene from tags {tags}")


def scene_spec_for_index(seed: int, index: int, split: str = "train", stream: str = "train",
                         tags: tuple[str, ...] = TAGS) -> SceneSpec:
    """The spec of sample `index` of a stream: depends only on (seed, stream, index)."""
    # str seeds hash with SHA-512 inside `random`, so this is stable across processes.
    return sample_scene_spec(random.Random(f"shapes:{seed}:{stream}:{index}"), split, tags)




def spec_from_dict(data: dict) -> SceneSpec:
    """Inverse of `dataclasses.asdict(spec)` (as stored in metadata["spec"])."""
    return SceneSpec(data["tag"], tuple(tuple(o) for o in data["objects"]), data["named_colors"],
                     data["relation"], data["layout_seed"])

