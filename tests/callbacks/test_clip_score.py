"""CLIPScoreCallback: a score during fit; missing weights switch it off with one warning, or refuse when strict."""

import pytest
import torch
from tiny import CONF, tiny_clip

from fluid_lightning.callbacks.clip_score import CLIPScoreCallback
from fluid_lightning.cli import lightning_cli


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_missing_clip_weights_warn_once_and_training_goes_on(tmp_path):
    callback = CLIPScoreCallback(model=str(tmp_path / "no-clip-here"))
    with pytest.warns(UserWarning, match="CLIPScoreCallback is off"):
        callback.setup(None, None, "fit")
    assert "could not load CLIP" in callback.off_because


def test_strict_clip_callback_refuses_to_start_without_weights(tmp_path):
    with pytest.raises(OSError, match="could not load CLIP"):
        CLIPScoreCallback(model=str(tmp_path / "no-clip-here"), strict=True).setup(None, None, "fit")


def test_clip_callback_logs_a_score_during_fit(tiny_clip_dir, tmp_path):
    cli = lightning_cli(
        ["fit", "--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"), "--config",
         str(CONF / "model/tiny_maskgit.yaml"), "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
         "--data.init_args.batch_size=2", "--trainer.default_root_dir", str(tmp_path),
         "--trainer.callbacks+=fluid_lightning.callbacks.clip_score.CLIPScoreCallback",
         f"--trainer.callbacks.model={tiny_clip_dir}", "--trainer.callbacks.num_images=3",
         "--model.init_args.sampling.steps=2"]
    )
    assert torch.isfinite(cli.trainer.callback_metrics["val/clip_score"])
