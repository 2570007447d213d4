"""The shapes renderer: the same scene for the same seed and index; the boxes it records and the pixels it
draws agree with the scene's metadata (GenEval's rules judge them correct, objects apart by a margin),
palette colours are exact inside objects, and every size from 32 px up renders."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fluid_lightning.data.shapes import (
    SceneSpec,
    render_scene,
    sample_scene_spec,
    scene_spec_for_index,
)
from fluid_lightning.data.vocabulary import COLORS, relative_position
from fluid_lightning.evaluation.geneval import evaluate_objects
from fluid_lightning.evaluation.shapes import find_objects


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


@pytest.mark.parametrize("size", [32, 48, 128])
def test_other_sizes_render(size):
    for i in range(10):
        image, _, meta = render_scene(scene_spec_for_index(3, i), size)
        assert image.size == (size, size)
        assert evaluate_objects(meta, meta["objects"])[0]
    with pytest.raises(ValueError):
        render_scene(0, 16)
