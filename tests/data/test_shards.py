"""Shard writers: a sink rolls samples into numbered tars of ``shard_size`` and its brace pattern names
them all; shapes shards hold, losslessly, the scenes ShapesDataModule renders for the same seed and
stream; cached-latent shards read back as float32 tokens or int64 codes with their captions."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import SHARD_IMAGE_SIZE, web_data

from fluid_lightning.data.samples import expand_shard_urls
from fluid_lightning.data.shapes import ShapesDataset, image_to_tensor
from fluid_lightning.data.shards import ShardSink, write_latent_shards, write_shapes_shards


def test_a_sink_rolls_shards_at_shard_size_and_its_pattern_names_them_all(tmp_path):
    with ShardSink(tmp_path / "out", shard_size=3, prefix="part-") as sink:
        for i in range(7):
            sink.write(f"{i:03d}", {"txt": f"caption {i}", "json": json.dumps({"i": i})})
        with pytest.raises(ValueError, match="must not contain '.'"):
            sink.write("a.b", {"txt": "a dot would split the key"})
    assert [Path(s).name for s in sink.shards] == ["part-00000.tar", "part-00001.tar", "part-00002.tar"]
    assert sink.count == 7 and expand_shard_urls(sink.url_pattern()) == sink.shards
    members = []
    for shard in sink.shards:
        with tarfile.open(shard) as tar:
            members.append(sorted(tar.getnames()))
    assert members[0] == ["000.json", "000.txt", "001.json", "001.txt", "002.json", "002.txt"]
    assert members[2] == ["006.json", "006.txt"]


def test_shapes_shards_hold_the_scenes_the_datamodule_renders(tmp_path):
    stats = write_shapes_shards(tmp_path, n=3, val_n=2, size=SHARD_IMAGE_SIZE, seed=5, shard_size=2, progress=False)
    assert (stats["train"]["written"], stats["val"]["written"]) == (3, 2) and len(stats["train"]["shards"]) == 2
    assert json.loads((tmp_path / "stats.json").read_text())["evaluation_prompts"] == stats["evaluation_prompts"]
    for stream in ("train", "val"):
        rendered, seen = ShapesDataset(stats[stream]["written"], image_size=SHARD_IMAGE_SIZE, seed=5, stream=stream), []
        for shard in stats[stream]["shards"]:
            with tarfile.open(shard) as tar:
                keys = sorted({name.split(".")[0] for name in tar.getnames()})
                seen += keys
                for key in keys:
                    item = rendered[int(key)]
                    with Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read())) as image:
                        assert torch.equal(image_to_tensor(image.convert("RGB")), item["image"])
                    assert tar.extractfile(f"{key}.txt").read().decode() == item["caption"]
        assert seen == [f"{i:09d}" for i in range(len(rendered))]


def test_latent_shards_read_back(tmp_path):
    rng = np.random.default_rng(0)
    floats = {f"{i:04d}": rng.standard_normal((16, 4)).astype(np.float16) for i in range(6)}
    stats = write_latent_shards(((k, v, f"caption {k}") for k, v in floats.items()), tmp_path / "f", shard_size=4)
    assert stats["written"] == 6 and len(stats["shards"]) == 2
    dm = web_data(stats["urls"], kind="latents", batch_size=3, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    assert [b["latent"].shape for b in batches] == [(3, 16, 4), (3, 16, 4)]
    assert batches[0]["latent"].dtype == torch.float32
    for batch in batches:
        for key, latent, caption in zip(batch["key"], batch["latent"], batch["caption"]):
            assert caption == f"caption {key}"
            assert torch.equal(latent, torch.from_numpy(floats[key].astype(np.float32)))
    codes = [(f"{i:04d}", torch.randint(0, 8192, (16,)), "codes") for i in range(4)]
    stats = write_latent_shards(codes, tmp_path / "codes")
    batch = next(iter(web_data(stats["urls"], kind="latents", batch_size=4, shuffle_buffer=0).train_dataloader()))
    assert batch["latent"].dtype == torch.long and batch["latent"].shape == (4, 16)
    assert torch.equal(batch["latent"], torch.stack([c for _, c, _ in codes]))
