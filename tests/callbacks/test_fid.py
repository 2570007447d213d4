"""FIDCallback: without its feature weights it warns once and training goes on, or refuses to start when
strict, naming the fix. Its FID in a real fit's TensorBoard: test_periodic.py; its real statistics from
uint8 batches: test_image_grid.py."""

from __future__ import annotations

import pytest

from fluid_lightning.callbacks.fid import FIDCallback


def test_fid_callback_without_its_weights_warns_once_and_goes_on_or_refuses_when_strict(tmp_path):
    missing = str(tmp_path / "pt_inception.pth")
    callback = FIDCallback(feature_weights=missing)
    with pytest.warns(UserWarning, match="FIDCallback is off"):
        callback.setup(None, None, "fit")
    assert "pass their local path" in callback.off_because
    with pytest.raises(FileNotFoundError, match="pass their local path"):
        FIDCallback(feature_weights=missing, strict=True).setup(None, None, "fit")
