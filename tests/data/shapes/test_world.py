"""The shapes world's scenes: metadata is JSON that rebuilds the scene and follows GenEval's prompt
templates for every tag; held-out prompts (and colour×shape pairs) never reach training, while every
colour, shape and relation still does."""

from __future__ import annotations

import json
import random

from fluid_lightning.data.shapes import (
    HELDOUT_COLOR_SHAPES,
    SHAPES,
    SceneSpec,
    evaluation_suite,
    geneval_metadata,
    is_heldout,
    sample_scene_spec,
    scene_spec_for_index,
    spec_from_dict,
)
from fluid_lightning.data.vocabulary import COLORS, RELATIONS, TAGS


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
