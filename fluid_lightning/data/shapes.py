"""The shapes world: compositional scenes a CPU model can learn, scored like GenEval.

A scene is a `SceneSpec` (which objects, which colours, which relation, a layout
seed); `render_scene` draws it deterministically and returns the image, the caption
and GenEval-format metadata plus the drawn objects' boxes. Captions follow
GenEval's prompt templates for its six tags. Some colour×shape pairs, position
triplets, counts and object pairs are *held out*: training scenes never name them
(held-out colour×shape pairs are never even drawn), and they form the compositional
part of `evaluation_suite()`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from .resumable import ResumableDataLoader, ResumableSampler, pin_memory_or_default, resolve_rank
from .vocabulary import (
    COLORS,
    NUMBER_WORDS,
    RELATIONS,
    TAGS,
    plural,
    relative_position,
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


def _draw_spec(rng: random.Random, tag: str, split: str) -> SceneSpec:
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
        spec = _draw_spec(rng, rng.choice(tags), split)
        if split == "any" or is_heldout(spec) == (split == "heldout"):
            return spec
    raise RuntimeError(f"could not sample a {split} scene from tags {tags}")


def scene_spec_for_index(seed: int, index: int, split: str = "train", stream: str = "train",
                         tags: tuple[str, ...] = TAGS) -> SceneSpec:
    """The spec of sample `index` of a stream: depends only on (seed, stream, index)."""
    # str seeds hash with SHA-512 inside `random`, so this is stable across processes.
    return sample_scene_spec(random.Random(f"shapes:{seed}:{stream}:{index}"), split, tags)


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


def spec_from_dict(data: dict) -> SceneSpec:
    """Inverse of `dataclasses.asdict(spec)` (as stored in metadata["spec"])."""
    return SceneSpec(data["tag"], tuple(tuple(o) for o in data["objects"]), data["named_colors"],
                     data["relation"], data["layout_seed"])


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
        spec = _draw_spec(rng, "color_attr", "any")
        held = is_heldout(spec)
        if wanted[held] and spec.objects not in seen:
            seen.add(spec.objects)
            wanted[held] -= 1
            specs.append(spec)
    by_tag: dict[str, list[SceneSpec]] = {}
    for spec in specs:
        by_tag.setdefault(spec.tag, []).append(spec)
    return [spec for group in by_tag.values() for spec in group * max(1, -(-min_per_tag // len(group)))]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous float tensor [3, H, W] in [-1, 1].

    Done in numpy: small torch element-wise ops on a strided view cost ~50× more here,
    and with intra-op threads on a busy machine they can take milliseconds each."""
    array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1))
    array *= 1 / 127.5
    array -= 1.0
    return torch.from_numpy(array)


class ShapesDataset(Dataset):
    """`num` scenes rendered on the fly; item i depends only on (seed, stream, i)."""

    def __init__(self, num: int, image_size: int = 64, seed: int = 0, stream: str = "train",
                 split: str = "train", bg_jitter: int = 0, tags: tuple[str, ...] = TAGS):
        self.num, self.image_size, self.seed, self.stream = num, image_size, seed, stream
        self.split, self.bg_jitter, self.tags = split, bg_jitter, tuple(tags)

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num:
            raise IndexError(index)
        spec = scene_spec_for_index(self.seed, index, self.split, self.stream, self.tags)
        image, caption, _ = render_scene(spec, self.image_size, bg_jitter=self.bg_jitter)
        return {"image": image_to_tensor(image), "caption": caption, "key": f"{self.stream}-{index:08d}"}


def collate_images(samples: list[dict]) -> dict:
    """Stack images, keep captions (and keys) as lists: the package's batch contract."""
    # np.stack, not torch.stack: same copy, without intra-op threading overhead (see image_to_tensor)
    images = torch.from_numpy(np.stack([s["image"].numpy() for s in samples]))
    batch = {"image": images, "caption": [s["caption"] for s in samples]}
    if all("key" in s for s in samples):
        batch["key"] = [s["key"] for s in samples]
    return batch


class ShapesDataModule(LightningDataModule):
    """Shapes scenes rendered on the fly: no files, deterministic by index.

    Train, val and test draw from the training split (held-out prompts never appear) from
    separate index streams (test has ``num_val`` scenes); use `evaluation_suite()` for the
    held-out prompts. ``pin_memory=None`` pins only when CUDA is available.
    """

    def __init__(self, image_size: int = 64, num_train: int = 10_000, num_val: int = 256,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, bg_jitter: int = 0,
                 tags: tuple[str, ...] = TAGS, pin_memory: bool | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.num_train, self.num_val = image_size, num_train, num_val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.bg_jitter, self.tags, self.pin_memory = bg_jitter, tuple(tags), pin_memory
        self.train_set: ShapesDataset | None = None
        self.val_set: ShapesDataset | None = None
        self.test_set: ShapesDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        common = dict(image_size=self.image_size, seed=self.seed, bg_jitter=self.bg_jitter, tags=self.tags)
        self.train_set = ShapesDataset(self.num_train, stream="train", **common)
        self.val_set = ShapesDataset(self.num_val, stream="val", **common)
        self.test_set = ShapesDataset(self.num_val, stream="test", **common)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # Resumable: Lightning checkpoints the position, so a run resumed mid-epoch goes on with the
        # batches it had not yet seen; the sampler also gives each DDP rank its own slice.
        rank, world_size = resolve_rank(self.trainer)
        sampler = ResumableSampler(dataset, rank, world_size, shuffle=shuffle, seed=self.seed)
        return ResumableDataLoader(dataset, sampler=sampler, generator=torch.Generator().manual_seed(self.seed),
                                   batch_size=self.batch_size,
                                   num_workers=self.num_workers, collate_fn=collate_images,
                                   pin_memory=pin_memory_or_default(self.pin_memory),
                                   persistent_workers=self.num_workers > 0,
                                   drop_last=shuffle and len(dataset) >= self.batch_size * world_size)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """`predict` generates images for the validation captions."""
        return self.val_dataloader()
