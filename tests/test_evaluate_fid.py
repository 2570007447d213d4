"""`evaluate fid`: the MS-COCO-30K protocol's command on a tiny scale, with a TorchScript feature net."""

import json

import pytest
import torch

from fluid_lightning.cli import lightning_cli, main
from fluid_lightning.data.shapes import render_scene
from fluid_lightning.data.shards import write_shapes_shards
from fluid_lightning.evaluation.fid import TinyConvFeatures, TorchScriptFeatures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    lightning_cli(["fit", "--config", "conf/trainer/cpu.yaml", "--config", "conf/data/shapes.yaml", "--config",
                   "conf/model/tiny_maskgit.yaml", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                   "--data.init_args.batch_size=2", "--trainer.default_root_dir", str(root)])
    return next(root.rglob("last.ckpt"))


class InceptionLike(torch.nn.Module):
    """The standard FID Inception's TorchScript interface: [0, 255] pixels, return_features."""

    def __init__(self):
        super().__init__()
        self.net = TinyConvFeatures()

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.net(images / 255)
        return features if return_features else features[:, :8]


def test_fid_command_with_a_torchscript_feature_net_and_both_kinds_of_real_data(checkpoint, tmp_path, capsys):
    feature_file = tmp_path / "features.pt"
    torch.jit.script(InceptionLike()).save(str(feature_file))
    features = TorchScriptFeatures(str(feature_file), call_kwargs={"return_features": True})
    assert features.num_features == 64

    folder = tmp_path / "real"
    folder.mkdir()
    captions = []
    for i in range(6):
        image, caption, _ = render_scene(i, size=32)
        image.save(folder / f"{i}.png")
        captions.append(caption)
    (tmp_path / "captions.txt").write_text("\n".join(captions) + "\n")
    write_shapes_shards(tmp_path / "shards", n=6, size=32, shard_size=3, progress=False)

    values = []
    for real in (folder, tmp_path / "shards" / "train"):
        main(["evaluate", "fid", "--ckpt", str(checkpoint), "--captions", str(tmp_path / "captions.txt"),
              "--real", str(real), "--feature", str(feature_file), "--num", "6", "--steps", "4", "--no-progress"])
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        values.append(result["fid"])
        assert result["num_images"] == 6
    assert all(v > 0 and v == v for v in values)  # an untrained model is far from the real images


def test_missing_feature_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass their local path"):
        TorchScriptFeatures(str(tmp_path / "pt_inception.pth"))


def test_fid_callback_without_its_weights_warns_once_and_goes_on_or_refuses_when_strict(tmp_path):
    from fluid_lightning.callbacks import FIDCallback

    missing = str(tmp_path / "pt_inception.pth")
    callback = FIDCallback(feature_weights=missing)
    with pytest.warns(UserWarning, match="FIDCallback is off"):
        callback.setup(None, None, "fit")
    assert callback.run(None, None) is None
    with pytest.raises(FileNotFoundError, match="pass their local path"):
        FIDCallback(feature_weights=missing, strict=True).setup(None, None, "fit")
