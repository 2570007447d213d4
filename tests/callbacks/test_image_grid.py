"""ImageGrid: it needs prompts or none (then it shows validation images over their reconstructions), and
its fixed batch read from a WebDataModule's uint8 validation batches gives the images float batches gave
(as FIDCallback's real statistics do). Its grids in a real fit's TensorBoard: test_periodic.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny import kl_tokenizer

from fluid_lightning.callbacks.fid import FIDCallback
from fluid_lightning.callbacks.image_grid import ImageGrid
from fluid_lightning.data.shards import write_shapes_shards
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.evaluation.fid import TinyConvFeatures
from fluid_lightning.lit.tokenizer_module import TokenizerModule


def test_image_grid_needs_prompts_or_none():
    with pytest.raises(ValueError, match="prompt"):
        ImageGrid([])


def test_validation_batches_of_uint8_pixels_give_what_float_batches_gave(tmp_path):
    """FID's real statistics and a tokenizer's image grid read WebDataModule's uint8 val batches."""
    write_shapes_shards(tmp_path, n=0, val_n=6, size=32, shard_size=3, progress=False)
    module, feature = TokenizerModule(kl_tokenizer()), TinyConvFeatures()
    results = {}
    for image_dtype in ("uint8", "float32"):
        data = WebDataModule(None, val_urls=str(tmp_path / "val"), image_size=32, batch_size=4, num_workers=0,
                             pin_memory=False, persistent_workers=False, image_dtype=image_dtype)
        trainer = SimpleNamespace(datamodule=data)
        fid = FIDCallback(feature=feature, num_images=5)
        assert fid._real_statistics(trainer, module) and len(fid.captions) == 5
        grid = ImageGrid(num_images=3)
        batch = grid._fixed_batch(trainer)
        assert batch["image"].dtype == getattr(torch, image_dtype)
        images = grid.images(module, batch)
        results[image_dtype] = [fid.metric.real_features_sum, fid.metric.real_features_cov_sum, fid.captions,
                                images["inputs"], images["reconstructions"]]
    for pixels, floats in zip(results["uint8"], results["float32"]):
        assert torch.equal(pixels, floats) if isinstance(pixels, torch.Tensor) else pixels == floats
