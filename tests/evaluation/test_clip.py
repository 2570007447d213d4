"""CLIP score offline, with a tiny random CLIP saved to a folder (transformers 5)."""

import pytest
import torch
from tiny import tiny_clip

from fluid_lightning.evaluation.clip import clip_score_update, make_clip_score


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_score_runs_offline_on_a_local_folder_and_depends_on_the_images(tiny_clip_dir):
    metric = make_clip_score(str(tiny_clip_dir))
    captions = ["a photo of a red circle", "three yellow circles", "two blue squares above a green triangle"] * 4
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(12, 3, 32, 32, generator=g), torch.rand(12, 3, 32, 32, generator=g)
    clip_score_update(metric, a, captions)
    score_a = float(metric.compute())
    assert score_a > 0
    metric.reset()
    clip_score_update(metric, a, captions)
    assert float(metric.compute()) == pytest.approx(score_a)
    metric.reset()
    clip_score_update(metric, b, captions)
    assert float(metric.compute()) != pytest.approx(score_a)
