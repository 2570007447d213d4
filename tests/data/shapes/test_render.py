"""The shapes world: determinism, metadata truth, held-out split, DataModule contract."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fluid_lightning.data.shapes import (
    HELDOUT_COLOR_SHAPES,
    SHAPES,
    SceneSpec,
    ShapesDataModule,
    evaluation_suite,
    geneval_metadata,
    is_heldout,
    render_scene,
    sample_scene_spec,
    scene_spec_for_index,
    spec_from_dict,
)
from fluid_lightning.data.vocabulary import COLORS, RELATIONS, TAGS, relative_position
from fluid_lightning.evaluation.geneval import evaluate_objects
from fluid_lightning.evaluation.shapes import find_objects

N_SCENES = 240  # 40 per tag on average; rendering + pixel matching ≈ 5 ms each


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(scene_spec_for_index(0, i), 64) for i in range(N_SCENES)]


def test_render_is_deterministic_per_seed_and_index():
    a_img, a_cap, a_meta = render_scene(scene_spec_for_index(7, 3), 64, bg_jitter=8)
    b_img, b_cap, b_meta = render_scene(scene_spec_for_index(7, 3), 64, bg_jitter=8)
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert (a_cap, a_meta) == (b_cap, b_meta)
    c_img, c_cap, _ = render_scene(12345, 64)
    d_img, d_cap, _ = render_scene(12345, 64)
    assert c_cap == d_cap and np.array_equal(np.asarray(c_img), np.asarray(d_img))
    others = {render_scene(scene_spec_for_index(7, i), 64)[1] for i in range(20)}
    assert len(others) > 10  # different indices give different scenes
    assert scene_spec_for_index(7, 3) == sample_scene_spec(random.Random("shapes:7:train:3"))


def test_metadata_is_json_and_follows_geneval_templates(scenes):
    seen_tags = set()
    for index, (image, caption, meta) in enumerate(scenes):
        assert image.size == (64, 64) and image.mode == "RGB"
        assert meta["prompt"] == caption and meta["tag"] in TAGS
        seen_tags.add(meta["tag"])
        stored = json.loads(json.dumps(meta))  # what a shard's .json holds
        assert spec_from_dict(stored["spec"]) == scene_spec_for_index(0, index)
    assert seen_tags == set(TAGS)
    position = SceneSpec("position", (("triangle", "blue"), ("circle", "yellow")), True, "left of")
    assert geneval_metadata(position) == {
        "tag": "position",
        "include": [{"class": "circle", "count": 1, "color": "yellow"},
                    {"class": "triangle", "count": 1, "color": "blue", "position": ["left of", 0]}],
        "prompt": "a photo of a blue triangle left of a yellow circle"}
    counting = SceneSpec("counting", (("square", "red"),) * 3)
    assert geneval_metadata(counting) == {
        "tag": "counting", "include": [{"class": "square", "count": 3}],
        "exclude": [{"class": "square", "count": 4}], "prompt": "a photo of three squares"}
    assert geneval_metadata(SceneSpec("colors", (("circle", "orange"),), True))["prompt"] == \
        "a photo of an orange circle"
    assert geneval_metadata(SceneSpec("two_object", (("square", "red"), ("circle", "red"))))["prompt"] == \
        "a photo of a square and a circle"


def test_recorded_boxes_agree_with_metadata(scenes):
    for _, caption, meta in scenes:
        objects = meta["objects"]
        correct, reasons = evaluate_objects(meta, objects)
        assert correct, (caption, reasons)
        for i, a in enumerate(objects):
            assert 0 <= a["box"][0] < a["box"][2] <= 64 and 0 <= a["box"][1] < a["box"][3] <= 64
            for b in objects[i + 1:]:  # separated by a margin, so pixels can tell them apart
                gap = max(b["box"][0] - a["box"][2], a["box"][0] - b["box"][2],
                          b["box"][1] - a["box"][3], a["box"][1] - b["box"][3])
                assert gap >= 2
        if meta["tag"] == "position":  # exactly the captioned relation, nothing diagonal
            assert relative_position(objects[0]["box"], objects[1]["box"]) == {meta["spec"]["relation"]}
        if meta["tag"] == "counting":
            assert len(objects) == meta["include"][0]["count"]


def test_pixels_agree_with_metadata(scenes):
    for image, caption, meta in scenes:
        found = find_objects(image)
        drawn = sorted((o["class"], o["color"]) for o in meta["objects"])
        assert sorted((o["class"], o["color"]) for o in found) == drawn, caption
        correct, reasons = evaluate_objects(meta, found)
        assert correct, (caption, reasons)
        for obj in found:  # every found object lies inside the box recorded for it
            assert any((o["class"], o["color"]) == (obj["class"], obj["color"]) and _contains(o["box"], obj["box"])
                       for o in meta["objects"]), (caption, obj)


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def test_palette_colours_are_exact_in_interiors():
    image, _, meta = render_scene(SceneSpec("colors", (("square", "purple"),), True, layout_seed=1), 64)
    x0, y0, x1, y1 = meta["objects"][0]["box"]
    pixels = np.asarray(image)[y0 + 1:y1 - 1, x0 + 1:x1 - 1].reshape(-1, 3)
    assert (pixels == np.array(COLORS["purple"])).all()
    background = np.asarray(image)[0, 0]
    assert tuple(background) == (128, 128, 128)


def test_heldout_prompts_never_in_training():
    suite = evaluation_suite()
    heldout = {geneval_metadata(s)["prompt"] for s in suite if is_heldout(s)}
    assert {s.tag for s in suite} == set(TAGS)
    assert {s.tag for s in suite if is_heldout(s)} == set(TAGS) - {"single_object"}
    assert len(heldout) >= 25
    rng = random.Random(0)
    for _ in range(3000):
        spec = sample_scene_spec(rng, "train")
        assert not is_heldout(spec)
        assert geneval_metadata(spec)["prompt"] not in heldout
        # held-out colour×shape pairs are never even drawn in training
        assert not any((c, s) in HELDOUT_COLOR_SHAPES for s, c in spec.objects)
    assert all(is_heldout(sample_scene_spec(rng, "heldout")) for _ in range(200))


def test_every_colour_shape_and_relation_is_still_trained():
    rng = random.Random(1)
    specs = [sample_scene_spec(rng, "train") for _ in range(3000)]
    named = {(s, c) for spec in specs if spec.named_colors for s, c in spec.objects}
    assert {c for _, c in named} == set(COLORS) and {s for s, _ in named} == set(SHAPES)
    assert {spec.relation for spec in specs if spec.tag == "position"} == set(RELATIONS)


@pytest.mark.parametrize("size", [32, 48, 128])
def test_other_sizes_render(size):
    for i in range(10):
        image, _, meta = render_scene(scene_spec_for_index(3, i), size)
        assert image.size == (size, size)
        assert evaluate_objects(meta, meta["objects"])[0]
    with pytest.raises(ValueError):
        render_scene(0, 16)


def test_datamodule_batch_contract():
    dm = ShapesDataModule(image_size=32, num_train=20, num_val=10, batch_size=8, seed=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"image", "caption"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8
    assert all(isinstance(c, str) and c.startswith("a photo of") for c in batch["caption"])
    val = list(dm.val_dataloader())
    assert sum(len(b["caption"]) for b in val) == 10 and val[-1]["image"].shape[0] == 2
    again = list(ShapesDataModule(image_size=32, num_train=20, num_val=10, batch_size=8, seed=3).val_dataloader())
    assert torch.equal(val[0]["image"], again[0]["image"]) and val[0]["caption"] == again[0]["caption"]
    # item i of the dataset is the scene the renderer gives for (seed, "train", i)
    image, caption, _ = render_scene(scene_spec_for_index(3, 5), 32)
    item = dm.train_set[5]
    assert item["caption"] == caption
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(item["image"], expected)


def test_loaders_pin_batches_by_default_only_where_cuda_is(monkeypatch):
    """A pinned batch copies to the GPU without blocking the Python thread that queues the kernels."""
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert ShapesDataModule(num_train=8, num_val=8).train_dataloader().pin_memory is cuda
        assert ShapesDataModule(num_train=8, num_val=8, pin_memory=False).val_dataloader().pin_memory is False


def test_the_suite_can_repeat_each_tags_prompts_to_a_minimum():
    base = evaluation_suite()
    large = evaluation_suite(min_per_tag=32)
    counts = {tag: sum(s.tag == tag for s in large) for tag in TAGS}
    assert min(counts.values()) >= 32 and set(large) == set(base)
    for tag in TAGS:  # every prompt of a tag repeated the same number of times
        group = [s for s in base if s.tag == tag]
        assert counts[tag] % len(group) == 0 and all(large.count(s) == counts[tag] // len(group) for s in group)
