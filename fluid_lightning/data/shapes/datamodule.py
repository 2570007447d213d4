"""Scenes rendered on the fly as a Dataset and a LightningDataModule."""

from __future__ import annotations

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..resumable import ResumableDataLoader, ResumableSampler, pin_memory_or_default, resolve_rank
from ..vocabulary import TAGS
from .render import image_to_tensor, render_scene
from .world import scene_spec_for_index


class ShapesDataset(Dataset):
    """`num` scenes rendered on the fly; item i depends only on (seed, stream, i).

    ``cache_images`` keeps each scene's pixels after its first render (num x size² x 3 bytes; each
    DataLoader worker holds its own), so later epochs skip the drawing."""

    def __init__(self, num: int, image_size: int = 64, seed: int = 0, stream: str = "train",
                 split: str = "train", bg_jitter: int = 0, tags: tuple[str, ...] = TAGS,
                 cache_images: bool = False):
        self.num, self.image_size, self.seed, self.stream = num, image_size, seed, stream
        self.split, self.bg_jitter, self.tags = split, bg_jitter, tuple(tags)
        self._rendered: dict[int, tuple[Image.Image, str]] | None = {} if cache_images else None

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num:
            raise IndexError(index)
        scene = self._rendered.get(index) if self._rendered is not None else None
        if scene is None:
            spec = scene_spec_for_index(self.seed, index, self.split, self.stream, self.tags)
            image, caption, _ = render_scene(spec, self.image_size, bg_jitter=self.bg_jitter)
            scene = image, caption
            if self._rendered is not None:
                self._rendered[index] = scene
        image, caption = scene
        return {"image": image_to_tensor(image), "caption": caption, "key": f"{self.stream}-{index:08d}"}


def collate_images(samples: list[dict]) -> dict:
    """Stack images, keep captions (and keys) as lists: the package's batch contract."""
    # np.stack, not torch.stack: same copy, without intra-op threading overhead (see image_to_tensor)
    images = torch.from_numpy(np.stack([s["image"].numpy() for s in samples]))
    batch = {"image": images, "caption": [s["caption"] for s in samples]}
    if all("key" in s for s in samples):
        batch["key"] = [s["key"] for s in samples]
    return batch


class ShapesDataModule(LightningDataModule):
    """Shapes scenes rendered on the fly: no files, deterministic by index.

    Train, val and test draw from the training split (held-out prompts never appear) from
    separate index streams (test has ``num_val`` scenes); use `evaluation_suite()` for the
    held-out prompts. ``pin_memory=None`` pins only when CUDA is available. ``cache_images``: see
    `ShapesDataset` (the quickstart's 5000 scenes at 64² take 61 MB).
    """

    def __init__(self, image_size: int = 64, num_train: int = 10_000, num_val: int = 256,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, bg_jitter: int = 0,
                 tags: tuple[str, ...] = TAGS, pin_memory: bool | None = None, cache_images: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.num_train, self.num_val = image_size, num_train, num_val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.bg_jitter, self.tags, self.pin_memory = bg_jitter, tuple(tags), pin_memory
        self.cache_images = cache_images
        self.train_set: ShapesDataset | None = None
        self.val_set: ShapesDataset | None = None
        self.test_set: ShapesDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        common = dict(image_size=self.image_size, seed=self.seed, bg_jitter=self.bg_jitter, tags=self.tags,
                      cache_images=self.cache_images)
        self.train_set = ShapesDataset(self.num_train, stream="train", **common)
        self.val_set = ShapesDataset(self.num_val, stream="val", **common)
        self.test_set = ShapesDataset(self.num_val, stream="test", **common)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # Resumable: Lightning checkpoints the position, so a run resumed mid-epoch goes on with the
        # batches it had not yet seen; the sampler also gives each DDP rank its own slice.
        rank, world_size = resolve_rank(self.trainer)
        sampler = ResumableSampler(dataset, rank, world_size, shuffle=shuffle, seed=self.seed)
        return ResumableDataLoader(dataset, sampler=sampler, generator=torch.Generator().manual_seed(self.seed),
                                   batch_size=self.batch_size,
                                   num_workers=self.num_workers, collate_fn=collate_images,
                                   pin_memory=pin_memory_or_default(self.pin_memory),
                                   persistent_workers=self.num_workers > 0,
                                   drop_last=shuffle and len(dataset) >= self.batch_size * world_size)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """`predict` generates images for the validation captions."""
        return self.val_dataloader()
