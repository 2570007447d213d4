"""GenEval's format and rules: include/exclude clauses judge found objects (colour on the first objects of
a class, position against an earlier clause's objects, exclude for exact counts); a folder in GenEval's
layout round-trips, other folders are ignored, and the summary is GenEval's (overall = mean over tags)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import write_rendered_suite

from fluid_lightning.evaluation.geneval import evaluate_objects, format_summary, iter_geneval_folder
from fluid_lightning.evaluation.shapes import evaluate_folder


def test_include_and_exclude_clauses_judge_the_found_objects_as_geneval_does():
    red = {"class": "circle", "color": "red", "box": [0, 0, 10, 10]}
    blue = {"class": "circle", "color": "blue", "box": [20, 0, 30, 10]}
    square = {"class": "square", "color": "green", "box": [40, 0, 50, 10]}
    # the colour is checked on the first `count` objects of the class, in detection order
    colour = {"include": [{"class": "circle", "count": 1, "color": "red"}]}
    assert evaluate_objects(colour, [red, blue]) == (True, [])
    assert evaluate_objects(colour, [blue, red]) == (False, ["expected red circle>=1, found 0"])
    # a position is relative to the objects an earlier clause matched, which must exist
    left_of = {"include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert evaluate_objects(left_of, [square, red]) == (True, [])
    assert evaluate_objects(left_of, [square, dict(red, box=[60, 0, 70, 10])]) == (
        False, ["expected circle left of target, found ['right of']"])
    assert evaluate_objects(left_of, [red]) == (
        False, ["expected square>=1, found 0", "no target for circle to be left of"])
    # "three circles": at least three, and fewer than four
    three = {"include": [{"class": "circle", "count": 3}], "exclude": [{"class": "circle", "count": 4}]}
    circles = [dict(red, box=[20 * i, 0, 20 * i + 10, 10]) for i in range(3)]
    assert evaluate_objects(three, circles) == (True, [])
    assert evaluate_objects(three, circles[:2]) == (False, ["expected circle>=3, found 2"])
    assert evaluate_objects(three, [*circles, blue]) == (False, ["expected circle<4, found 4"])


def test_folder_round_trip_and_geneval_summary(tmp_path):
    records = write_rendered_suite(tmp_path, wrong_every=4)
    (tmp_path / "notes").mkdir()  # ignored, as GenEval ignores non-numeric folders
    found = list(iter_geneval_folder(tmp_path))
    assert len(found) == 24 and found[0][0].name == "00000.png" and found[0][1] == records[0]
    results, summary = evaluate_folder(tmp_path, out=tmp_path / "results.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 24
    assert set(lines[0]) >= {"filename", "tag", "prompt", "correct", "reason", "metadata"}
    assert lines[0]["filename"] == "00000/samples/00000.png" and lines[0]["correct"] is False
    assert summary["images"] == 24 and summary["prompts"] == 12
    assert summary["correct_images"] == pytest.approx(21 / 24) and summary["correct_prompts"] == 1.0
    tag_means = [t["accuracy"] for t in summary["tags"].values()]
    assert summary["overall"] == pytest.approx(np.mean(tag_means))  # GenEval: mean over tasks
    assert "Overall score (avg. over tasks)" in format_summary(summary)
    with pytest.raises(FileNotFoundError, match="layout"):
        evaluate_folder(tmp_path / "notes")
