"""WebDataset shards -> the package's batch contract, safe for multi-rank training.

Reading plan per rank (rank and world size from the trainer, torch.distributed, or
given explicitly):
1. The shard list is expanded (braces, ``::``, globs, folders, ``pipe:``) and split by
   rank *in the main process* (``urls[rank::world_size]``): webdataset's
   ``split_by_node`` is only reliable with fork workers.
2. Each DataLoader worker then reads either its slice ``urls[worker::num_workers]``
   (``resampled=False``: one pass, disjoint samples) or draws shards with replacement
   forever (``resampled=True``) and stops after a fixed number of batches, so every
   rank yields exactly the same number of batches (uneven batches hang DDP).
3. Samples pass a shuffle buffer (raw bytes, before decoding, to save memory), are
   decoded, and are batched inside the worker. Tar members are read by `tarstream` (not
   `tarfile`, whose per-member overhead cost more than the JPEG decode); images are
   batched as uint8 (see `pixels`) unless ``image_dtype="float32"``.

Bad data never stops training: a sample without an image, without a caption, with an
undecodable image (truncated, not an image) or an unreadable latent is skipped, and a
shard that cannot be opened or read is warned about and skipped. Every skip is
counted in `SampleCounters`, shared with the workers, so counts are exact;
`WebDataModule.stats()` returns them and `callbacks.DataStatsLogger` logs them.
"""

from __future__ import annotations

import functools
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator

from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fluid_lightning.data.pixels import collate_pixels
from fluid_lightning.data.resumable import CountingDataLoader, pin_memory_or_default, resolve_rank
from fluid_lightning.data.samples import (
    COUNTERS,
    ImageDecoder,
    LatentDecoder,
    SampleCounters,
    ShardErrorHandler,
    collate_latents,
    expand_shard_urls,
    is_remote,
    shuffled,
)
from fluid_lightning.data.tarstream import tarfile_samples


class ShardBatchStream(IterableDataset):
    """Batches from this rank's shards; see the module docstring for the plan.

    `batches_per_worker` (resampled mode) fixes the epoch length; `epoch` is bumped by
    `EpochDataLoader` in the main process and mixed into every worker's seed, so
    shard draws, shuffling and crops differ per epoch yet are reproducible.
    `skip_batches` (set by `EpochDataLoader` on a mid-epoch resume) is the number of batches
    of this epoch already trained on, over all workers: a one-pass stream reads past them again
    (same order, so the same samples); a resampled stream draws the rest of the epoch afresh
    (seeded by the resume point) instead of spending time re-reading.
    """

    def __init__(self, urls: list[str], decoder: Callable, collate: Callable, batch_size: int,
                 counters: SampleCounters, resampled: bool, shuffle_buffer: int, seed: int, rank: int,
                 batches_per_worker: int | None = None, partial: bool = True, length: int | None = None):
        super().__init__()
        self.urls, self.decoder, self.collate, self.batch_size = urls, decoder, collate, batch_size
        self.counters, self.resampled, self.shuffle_buffer = counters, resampled, shuffle_buffer
        self.seed, self.rank, self.batches_per_worker = seed, rank, batches_per_worker
        self.partial, self.length = partial, length
        self.epoch, self._iterations, self.skip_batches = 0, 0, 0

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown: a single pass over shards has no fixed number of batches")
        return self.length

    def _shards(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[dict]:
        if self.resampled:
            while True:
                yield {"url": rng.choice(self.urls)}
        mine = self.urls[worker::num_workers]
        yield from ({"url": url} for url in mine)

    def __iter__(self) -> Iterator[dict]:
        # Not a generator: the worker, seed and skip are fixed when the DataLoader calls iter(), before
        # `EpochDataLoader` clears `skip_batches` (with num_workers=0 the body would otherwise run later).
        info = get_worker_info()
        if info is None:  # in the main process (num_workers=0): EpochDataLoader bumps `epoch` itself
            worker, num_workers, epoch, first = 0, 1, self.epoch, True
        else:  # a worker's copy; a persistent worker keeps the `epoch` it was made with, so count on
            self._iterations += 1
            worker, num_workers = info.id, info.num_workers
            epoch, first = self.epoch + self._iterations - 1, self._iterations == 1
        # DataLoader takes batches from workers in turn, so this worker served these of the skipped ones:
        skip = self.skip_batches // num_workers + (worker < self.skip_batches % num_workers)
        skip = skip if first else 0  # a persistent worker resumes only its first epoch
        resume = f":resumed-after-{skip}" if self.resampled and skip else ""
        rng = random.Random(f"wds:{self.seed}:{self.rank}:{worker}:{epoch}{resume}")
        return self._batches(rng, worker, num_workers, skip)

    def _batches(self, rng: random.Random, worker: int, num_workers: int, skip: int) -> Iterator[dict]:
        handler = ShardErrorHandler(self.counters, max_consecutive=max(100, 10 * len(self.urls)))
        samples = tarfile_samples(self._shards(rng, worker, num_workers), handler=handler)
        samples = handler.passed(samples)
        if self.shuffle_buffer > 1:
            samples = shuffled(samples, rng, self.shuffle_buffer)
        batch: list[dict] = []
        emitted, limit = (skip, self.batches_per_worker) if self.resampled else (0, None)
        to_discard = 0 if self.resampled else skip
        for sample in self.decoder(samples, rng):
            batch.append(sample)
            if len(batch) == self.batch_size:
                if to_discard:
                    batch, to_discard = [], to_discard - 1
                    continue
                yield self.collate(batch)
                batch, emitted = [], emitted + 1
                if limit is not None and emitted >= limit:
                    return
        if batch and self.partial and not to_discard:
            yield self.collate(batch)


def as_is(batch: dict) -> dict:
    """The DataLoader's collate_fn: batches are made in the stream (torch's default_convert would walk
    every caption and key of every batch again)."""
    return batch


class EpochDataLoader(CountingDataLoader):
    """DataLoader that tells its `ShardBatchStream` which epoch is starting (this runs in
    the main process, before non-persistent workers copy the dataset), and whose position
    (epoch, batches served in it) Lightning checkpoints: a run resumed mid-epoch goes on
    with the batches it had not yet trained on (`ShardBatchStream.skip_batches`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_at = 0

    def __iter__(self):
        self.dataset.epoch += 1
        skipped, self._resume_at = self._resume_at, 0
        self.dataset.skip_batches = skipped
        iterator = super().__iter__()  # workers (or the in-process stream) take skip_batches here
        self.dataset.skip_batches = 0
        return self._count(iterator, skipped)

    def state_dict(self) -> dict[str, int]:
        served = self._served
        if self.dataset.length is None and served and not self._exhausted:
            # Without a length, Lightning's fetcher reads one batch ahead to detect the epoch's end
            # (lightning.pytorch.loops.fetchers._PrefetchDataFetcher): that batch was not trained on.
            served -= 1
        return {"epoch": self.dataset.epoch, "batches": served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        finished = self.dataset.length is not None and state["batches"] >= self.dataset.length
        # __iter__ bumps the epoch: back to the saved one mid-epoch, on to the next after a finished one
        self.dataset.epoch = state["epoch"] if finished else state["epoch"] - 1
        self._resume_at = 0 if finished else state["batches"]


class WebDataModule(LightningDataModule):
    """Image or cached-latent WebDataset shards as `{"image"|"latent", "caption", "key"}` batches.

    kind="images": ``{key}.jpg|png|webp`` + caption; kind="latents": ``{key}.latent.npy``
    + caption (see `shards.write_latent_shards`). Captions come from ``{key}.txt`` or
    the ``{key}.json`` field `caption_key`.
    Train: `resampled=True` (default) needs `epoch_batches`, the batches per rank per
    epoch (rounded up to a multiple of max(1, num_workers)); `resampled=False` reads
    each shard once per epoch. Val: one pass over `val_urls` unless `val_batches` is
    set, which switches it to resampled with that fixed length (use it under DDP when
    validation logs with sync_dist, because a single pass can give ranks uneven batches).
    `rank`/`world_size` override what the trainer reports (tests, custom launchers).
    `pin_memory=None` pins only when CUDA is available.
    `image_dtype`: ``"uint8"`` (default) delivers ``batch["image"]`` as uint8 [B, 3, S, S] pixels
    (a channels-last view); models convert them on their device with `pixels.images_to_float`.
    ``"float32"`` delivers the converted [-1, 1] floats instead (more bytes to build, pass and copy).
    """

    def __init__(self, train_urls: str | list[str] | None = None, val_urls: str | list[str] | None = None,
                 kind: str = "images", image_size: int = 256, random_crop: bool = True,
                 batch_size: int = 32, num_workers: int = 4, shuffle_buffer: int = 1000,
                 resampled: bool = True, epoch_batches: int | None = None, val_batches: int | None = None,
                 caption_key: str = "caption", pin_memory: bool | None = None, persistent_workers: bool = True,
                 prefetch_factor: int | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, image_dtype: str = "uint8"):
        super().__init__()
        if kind not in ("images", "latents"):
            raise ValueError(f"kind must be images|latents, got {kind!r}")
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be uint8|float32, got {image_dtype!r}")
        if resampled and train_urls is not None and not epoch_batches:
            raise ValueError("resampled=True needs epoch_batches (batches per rank per epoch)")
        self.save_hyperparameters()
        self.train_urls, self.val_urls, self.kind = train_urls, val_urls, kind
        self.image_size, self.random_crop, self.batch_size = image_size, random_crop, batch_size
        self.num_workers, self.shuffle_buffer, self.resampled = num_workers, shuffle_buffer, resampled
        self.epoch_batches, self.val_batches, self.caption_key = epoch_batches, val_batches, caption_key
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.prefetch_factor, self.seed, self.rank, self.world_size = prefetch_factor, seed, rank, world_size
        self.image_dtype = image_dtype
        self.counters: SampleCounters | None = None
        self.rank_urls: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.counters is None:
            self.counters = SampleCounters()
        self.rank, self.world_size = resolve_rank(self.trainer, self.rank, self.world_size)
        for split, spec, resampled in (("train", self.train_urls, self.resampled),
                                       ("val", self.val_urls, bool(self.val_batches))):
            if spec is None:
                continue
            urls = expand_shard_urls(spec)
            if not urls:
                raise ValueError(f"no {split} shards match {spec!r}")
            missing = [u for u in urls if not is_remote(u) and not os.path.exists(u)]
            if missing and len(missing) == len(urls):
                raise FileNotFoundError(f"{split}_urls {spec!r}: no such shards (first: {missing[0]!r}); build them "
                                        "with `python -m fluid_lightning data shapes|shards`")
            if missing:  # read past and counted as shard errors, like a shard that breaks mid-read
                warnings.warn(f"{split}_urls: {len(missing)} of {len(urls)} shards do not exist (first: {missing[0]!r}); "
                              "they will be skipped", stacklevel=2)
            if len(urls) >= self.world_size:
                urls = urls[self.rank::self.world_size]
            elif not resampled:
                raise ValueError(f"{len(urls)} {split} shards cannot feed {self.world_size} ranks in one "
                                 "pass; write more shards or use resampled mode")
            if not resampled and len(urls) < max(1, self.num_workers):
                warnings.warn(f"rank {self.rank}: {len(urls)} {split} shards for {self.num_workers} "
                              "workers; some workers will be idle", stacklevel=2)
            self.rank_urls[split] = urls

    def _stream(self, split: str, train: bool) -> ShardBatchStream:
        if split not in self.rank_urls:
            self.setup("fit" if train else "validate")
        if split not in self.rank_urls:
            raise ValueError(f"no {split}_urls configured")
        resampled = self.resampled if train else bool(self.val_batches)
        workers = max(1, self.num_workers)
        batches = (self.epoch_batches if train else self.val_batches) if resampled else None
        per_worker = math.ceil(batches / workers) if batches else None
        if self.kind == "images":
            decoder = ImageDecoder(self.image_size, self.random_crop and train, self.caption_key, self.counters)
            collate = functools.partial(collate_pixels, image_dtype=self.image_dtype)
        else:
            decoder, collate = LatentDecoder(self.caption_key, self.counters), collate_latents
        return ShardBatchStream(
            self.rank_urls[split], decoder, collate, self.batch_size, self.counters, resampled,
            self.shuffle_buffer if train else 0, self.seed + (0 if train else 10_007), self.rank,
            batches_per_worker=per_worker, partial=not resampled,
            length=per_worker * workers if per_worker else None)

    def _loader(self, stream: ShardBatchStream) -> DataLoader:
        workers = self.num_workers
        return EpochDataLoader(
            stream, batch_size=None, num_workers=workers, collate_fn=as_is,
            pin_memory=pin_memory_or_default(self.pin_memory),
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=self.prefetch_factor if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._stream("train", train=True))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_urls is None:
            return []  # Lightning reads an empty list as "no validation"
        return self._loader(self._stream("val", train=False))

    def predict_dataloader(self) -> DataLoader | list:
        """`predict` generates images for the validation captions."""
        return self.val_dataloader()

    def stats(self) -> dict[str, int]:
        """Samples delivered and skipped (by reason) on this rank, all workers included."""
        return self.counters.as_dict() if self.counters is not None else dict.fromkeys(COUNTERS, 0)
