"""FluidPipeline: a checkpoint becomes the same images the trained module draws (EMA weights), seeded,
with the KV cache or without; `sample` writes them with a grid."""

import torch
from PIL import Image
from tiny import CONF

from fluid_lightning.cli import lightning_cli, main
from fluid_lightning.pipeline import FluidPipeline

BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]


def config_args(*paths) -> list[str]:
    return [arg for p in paths for arg in ("--config", str(p))]


def test_checkpoint_to_pipeline_to_images_round_trip(tmp_path):
    cli = lightning_cli(
        ["fit", *config_args(*BASE, CONF / "model/tiny_raster_discrete.yaml"), "--trainer.max_steps=2",
         "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4", "--trainer.default_root_dir", str(tmp_path)],
    )
    ckpt = next(tmp_path.rglob("last.ckpt"))
    prompts = ["a photo of a red circle", "a photo of two squares"]
    expected = FluidPipeline.from_module(cli.model).generate(prompts, cfg=2.0, seed=7)
    pipe = FluidPipeline.from_checkpoint(ckpt)
    torch.testing.assert_close(pipe.generate(prompts, cfg=2.0, seed=7), expected, rtol=0, atol=0)
    # The pipeline samples with the EMA weights, which the checkpoint carries.
    assert not torch.equal(pipe.generator.embed.weight, cli.model.generator.embed.weight)
    torch.testing.assert_close(pipe.generator.embed.weight, cli.model.ema.embed.weight, rtol=0, atol=0)
    images = pipe(prompts, seed=1)
    assert [im.size for im in images] == [(32, 32), (32, 32)]

    out = tmp_path / "samples"
    main(["sample", "--ckpt", str(ckpt), "--prompt", prompts[0], "--prompt", prompts[1], "--per-prompt", "2",
          "--out", str(out), "--cfg", "2", "--seed", "3", "--no-kv-cache"])
    pngs = sorted(out.glob("0*.png"))
    assert len(pngs) == 4 and Image.open(out / "grid.png").size == (64, 64)
    again = tmp_path / "again"
    main(["sample", "--ckpt", str(ckpt), "--prompt", prompts[0], "--prompt", prompts[1], "--per-prompt", "2",
          "--out", str(again), "--cfg", "2", "--seed", "3"])
    assert (again / "grid.png").read_bytes() == (out / "grid.png").read_bytes()  # KV cache or not, same images
