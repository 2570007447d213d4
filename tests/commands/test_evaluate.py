"""The `evaluate` command: `shapes` prints GenEval's summary, `generate` writes GenEval's layout (the
shapes world's suite by default), `fid` follows the MS-COCO-30K protocol on a tiny scale with a
TorchScript feature net and both kinds of real data."""

import argparse
import json

import pytest
import torch
from PIL import Image
from tiny import CONF, write_rendered_suite

from fluid_lightning.cli import lightning_cli, main
from fluid_lightning.commands import evaluate
from fluid_lightning.data.shapes import evaluation_suite, geneval_metadata, render_scene
from fluid_lightning.data.shards import write_shapes_shards
from fluid_lightning.evaluation.fid import TinyConvFeatures, TorchScriptFeatures
from fluid_lightning.evaluation.shapes import evaluate_folder

SUITE = evaluation_suite()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    lightning_cli(["fit", "--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"), "--config",
                   str(CONF / "model/tiny_maskgit.yaml"), "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
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


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(argv)


def test_generate_without_metadata_uses_the_shapes_suite(checkpoint, tmp_path):
    out = tmp_path / "suite"
    main(["evaluate", "generate", "--ckpt", str(checkpoint), "--out", str(out), "--per-prompt", "1", "--steps", "1",
          "--min-per-tag", "8", "--no-progress"])
    assert len(list(out.glob("*/samples/00000.png"))) == len(evaluation_suite(min_per_tag=8)) > len(SUITE)


def test_shapes_command_prints_the_summary(tmp_path, capsys):
    write_rendered_suite(tmp_path, per_prompt=1)
    ns = _parse(["shapes", "--images", str(tmp_path), "--json", "--no-progress"])
    summary = ns.run(ns)
    assert json.loads(capsys.readouterr().out)["overall"] == summary["overall"] == 1.0
    assert (tmp_path / "results.jsonl").is_file()


def test_generate_command_writes_geneval_layout_that_the_evaluator_reads(tmp_path):
    main(["fit", "--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"), "--config",
          str(CONF / "model/tiny_fluid.yaml"), "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--data.init_args.batch_size=2", "--trainer.default_root_dir", str(tmp_path)])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(geneval_metadata(s)) + "\n" for s in SUITE[:3]))
    out = tmp_path / "samples"
    ns = _parse(["generate", "--ckpt", str(ckpt), "--metadata", str(metadata), "--out", str(out),
                 "--per-prompt", "2", "--batch-size", "4", "--steps", "2", "--device", "cpu", "--no-progress"])
    assert ns.run(ns) == 6
    pngs = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in pngs[:2]] == ["00000/samples/00000.png", "00000/samples/00001.png"]
    assert len(pngs) == 6 and Image.open(pngs[0]).size == (32, 32)
    results, summary = evaluate_folder(out)
    assert len(results) == 6 and summary["prompts"] == 3  # an untrained model: scored, not necessarily right
