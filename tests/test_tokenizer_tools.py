"""Tokenizer work outside training: latent caches of KL tokens (float32 or float16) and VQ codes read back
through WebDataModule equal to encoding the same images on the fly, and a rerun resumes, redoing no
finished shard. Through the `tokenizer` command: tests/commands/test_tokenizer.py."""

import pytest
import torch
from tiny import kl_tokenizer, vq_tokenizer

from fluid_lightning.data.shapes import ShapesDataset
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.tokenizer_tools import cache_latents, shapes_plan


@pytest.mark.parametrize("make,dtype", [(kl_tokenizer, "float32"), (kl_tokenizer, "float16"), (vq_tokenizer, "float16")],
                         ids=["kl32", "kl16", "vq"])
def test_cached_latents_read_back_equal_encoding_on_the_fly(make, dtype, tmp_path):
    tok = make().eval()
    info = cache_latents(tok, shapes_plan(10, 32, shard_size=4), tmp_path / "lat", batch_size=3, dtype=dtype,
                         progress=False)
    assert info["written"] == 10 and len(info["shards"]) == 3
    again = cache_latents(tok, shapes_plan(10, 32, shard_size=4), tmp_path / "lat", progress=False)
    assert again["written"] == 0 and again["skipped_shards"] == 3  # resumed: nothing redone

    data = WebDataModule(str(tmp_path / "lat"), kind="latents", resampled=False, batch_size=4, num_workers=0,
                         shuffle_buffer=0, rank=0, world_size=1)
    data.setup("fit")
    cached = {k: z for batch in data.train_dataloader() for k, z in zip(batch["key"], batch["latent"])}
    images = ShapesDataset(10, image_size=32)
    expected = tok.encode(torch.stack([images[i]["image"] for i in range(10)]))
    assert sorted(cached) == [images[i]["key"] for i in range(10)]
    for i in range(10):
        got = cached[images[i]["key"]]
        assert got.dtype == expected.dtype
        # float32: equal up to batch-size-dependent conv arithmetic; float16: up to its rounding
        tol = 0 if tok.discrete else 2e-3 * expected.abs().max().item() if dtype == "float16" else 1e-5
        torch.testing.assert_close(got, expected[i], rtol=0, atol=tol)
