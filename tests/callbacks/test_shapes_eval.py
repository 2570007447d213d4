"""ShapesEvalCallback: without its metadata file it warns once and training goes on, and it scores only
GenEval's tags. Its scores in a real fit's TensorBoard: test_periodic.py."""

from __future__ import annotations

import pytest
from tiny import fit_logged, tensorboard_events

from fluid_lightning.callbacks.shapes_eval import ShapesEvalCallback


def test_missing_metadata_is_reported_once_and_training_goes_on(tmp_path):
    callback = ShapesEvalCallback(metadata=str(tmp_path / "nope.jsonl"), every_n_steps=1)
    with pytest.warns(UserWarning, match="ShapesEvalCallback is off: no metadata file") as record:
        log_dir = fit_logged(tmp_path, [callback], max_steps=2)
    assert sum("ShapesEvalCallback" in str(w.message) for w in record) == 1
    assert not [t for t in tensorboard_events(log_dir).Tags()["scalars"] if t.startswith("shapes/")]


def test_shapes_eval_tags_must_be_geneval_tags():
    with pytest.raises(ValueError, match="tags must be among single_object, .*got \\['colours'\\]"):
        ShapesEvalCallback(tags=["single_object", "colours"])
