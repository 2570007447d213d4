"""FID with a pluggable feature net: zero for a set against itself, growing with noise; a missing
TorchScript feature file names the fix."""

import numpy as np
import pytest
import torch

from fluid_lightning.data.shapes import render_scene, scene_spec_for_index
from fluid_lightning.evaluation.fid import TinyConvFeatures, TorchScriptFeatures, make_fid


def _shapes_batch(n: int, offset: int = 0) -> torch.Tensor:
    images = [render_scene(scene_spec_for_index(0, offset + i), 32)[0] for i in range(n)]
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    real = _shapes_batch(64)
    scores = []
    for sigma in (0.0, 0.05, 0.2):
        metric = make_fid(TinyConvFeatures(num_features=16))
        metric.update(real, real=True)
        metric.update((real + sigma * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
                      real=False)
        scores.append(float(metric.compute()))
    assert abs(scores[0]) < 1e-3 and scores[0] < scores[1] < scores[2], scores
    # another sample of the same world is closer than a noisy copy of this one
    metric = make_fid(TinyConvFeatures(num_features=16))
    metric.update(real, real=True)
    metric.update(_shapes_batch(64, offset=1000), real=False)
    assert float(metric.compute()) < scores[2]


def test_missing_feature_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass their local path"):
        TorchScriptFeatures(str(tmp_path / "pt_inception.pth"))
