"""ShapesDataModule: batches follow the package's contract (float images in [-1, 1], captions as a list),
validation is the same on every build, and dataset item i is the scene the renderer draws for (seed, i).
How its loaders resume and pin: tests/data/test_resumable.py."""

from __future__ import annotations

import numpy as np
import torch

from fluid_lightning.data.shapes import ShapesDataModule, datamodule, render_scene, scene_spec_for_index


def test_datamodule_batch_contract():
    dm = ShapesDataModule(image_size=32, num_train=20, num_val=10, batch_size=8, seed=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"image", "caption"}
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8
    assert all(isinstance(c, str) and c.startswith("a photo of") for c in batch["caption"])
    val = list(dm.val_dataloader())
    assert sum(len(b["caption"]) for b in val) == 10 and val[-1]["image"].shape[0] == 2
    again = list(ShapesDataModule(image_size=32, num_train=20, num_val=10, batch_size=8, seed=3).val_dataloader())
    assert torch.equal(val[0]["image"], again[0]["image"]) and val[0]["caption"] == again[0]["caption"]
    # item i of the dataset is the scene the renderer gives for (seed, "train", i)
    image, caption, _ = render_scene(scene_spec_for_index(3, 5), 32)
    item = dm.train_set[5]
    assert item["caption"] == caption
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(item["image"], expected)


def test_cached_images_are_the_rendered_ones_and_each_scene_is_drawn_once(monkeypatch):
    plain = ShapesDataModule(image_size=32, num_train=12, num_val=4, batch_size=4, seed=3)
    cached = ShapesDataModule(image_size=32, num_train=12, num_val=4, batch_size=4, seed=3, cache_images=True)
    plain.setup("fit")
    cached.setup("fit")
    draws = []

    def counted_render(spec, *args, **kwargs):
        draws.append(spec)
        return render_scene(spec, *args, **kwargs)

    monkeypatch.setattr(datamodule, "render_scene", counted_render)
    epochs = [list(cached.train_dataloader()) for _ in range(2)]
    assert len(draws) == 12  # the second epoch draws nothing
    for index in range(12):
        a, b = plain.train_set[index], cached.train_set[index]
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["key"] == b["key"]
    assert all(b["image"].shape == (4, 3, 32, 32) for epoch in epochs for b in epoch)
