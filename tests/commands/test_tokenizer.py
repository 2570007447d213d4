"""The `tokenizer` command: `stats` writes statistics that normalise the tokens, and the whole fit →
export → stats → evaluate → cache path runs through the CLI. Its library: tests/test_tokenizer_tools.py."""

import json

import pytest
import torch
from tiny import CONF, kl_tokenizer, shapes_images

from fluid_lightning.cli import main
from fluid_lightning.data.shapes import ShapesDataset
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.models.tokenizers import unpatchify
from fluid_lightning.tokenizer_tools import export_tokenizer, load_tokenizer


def test_stats_command_writes_stats_that_normalise_the_tokens(tmp_path):
    folder = export_tokenizer(kl_tokenizer(), tmp_path / "kl")
    main(["tokenizer", "stats", "--tokenizer", str(folder), "--shapes", "16", "--batch-size", "8", "--no-progress"])
    stats = json.loads((folder / "latent_stats.json").read_text())
    assert stats["num_images"] == 16 and len(stats["shift"]) == len(stats["scale"]) == 4
    tok = load_tokenizer(str(folder)).eval()  # picks the stats up from the folder
    torch.testing.assert_close(tok.latent_scale.flatten(), torch.tensor(stats["scale"]))
    z = unpatchify(tok.encode(shapes_images(16)), 2, 4)  # normalised latents
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)


def test_fit_export_stats_and_cache_shards_through_the_cli(tmp_path, monkeypatch):
    from PIL import Image

    from fluid_lightning.data.shards import write_shapes_shards

    conf = str(CONF / "tokenizer/kl_shapes.yaml")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", conf, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--data.init_args.image_size=32",
          "--data.init_args.batch_size=2", "--trainer.enable_progress_bar=false", "--model.init_args.disc_start=1",
          "--trainer.default_root_dir", str(tmp_path / "fit")])
    ckpt = tmp_path / "fit/checkpoints/last.ckpt"  # checkpoints follow the root dir
    grid = next((tmp_path / "fit").rglob("reconstructions_step0000002.png"))  # the ImageGrid at fit end
    # the first val batch (2 images) over their 2 reconstructions, 4x enlarged, captioned
    width, height = Image.open(grid).size
    assert width == 2 * 32 * 4 and height > 2 * 32 * 4
    folder = tmp_path / "kl"
    main(["tokenizer", "export", "--ckpt", str(ckpt), "--out", str(folder)])
    main(["tokenizer", "stats", "--tokenizer", str(folder), "--shapes", "8", "--no-progress"])
    tok = load_tokenizer(str(folder)).eval()
    assert (tok.image_size, tok.grid_size, tok.token_dim) == (32, 4, 16)
    assert not torch.equal(tok.latent_scale, torch.ones_like(tok.latent_scale))
    main(["tokenizer", "evaluate", "--tokenizer", str(folder), "--shapes", "4", "--stream", "val", "--no-progress"])
    from_ckpt = load_tokenizer(str(ckpt))  # a TokenizerModule checkpoint works directly too (its EMA copy)
    assert torch.equal(from_ckpt.model.decoder.conv_out.weight, tok.model.decoder.conv_out.weight)
    with pytest.raises(SystemExit, match="is a TokenizerModule checkpoint; this needs a GeneratorModule one"):
        main(["sample", "--ckpt", str(ckpt), "--prompt", "x", "--out", str(tmp_path / "x")])

    write_shapes_shards(tmp_path / "shapes", n=6, size=32, shard_size=3, progress=False)
    main(["tokenizer", "cache", "--tokenizer", str(folder), "--shards", str(tmp_path / "shapes/train"),
          "--out", str(tmp_path / "lat"), "--dtype", "float32", "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "lat").glob("*.tar")) == ["00000.tar", "00001.tar"]
    data = WebDataModule(str(tmp_path / "lat"), kind="latents", resampled=False, batch_size=6, num_workers=0,
                         shuffle_buffer=0, rank=0, world_size=1)
    batch = next(iter(data.train_dataloader()))
    images = ShapesDataset(6, image_size=32)  # the same scenes the shards hold (lossless PNG)
    expected = tok.encode(torch.stack([images[int(k)]["image"] for k in batch["key"]]))
    torch.testing.assert_close(batch["latent"], expected, rtol=0, atol=1e-5)
