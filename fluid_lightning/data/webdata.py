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
   decoded, and are batched inside the worker.

Bad data never stops training: a sample without an image, without a caption, with an
undecodable image (truncated, not an image) or an unreadable latent is skipped, and a
shard that cannot be opened or read is warned about and skipped. Every skip is
counted in `SampleCounters`, shared with the workers, so counts are exact;
`WebDataModule.stats()` returns them and `DataStatsLogger` logs them.
"""

from __future__ import annotations

import glob
import io
import json
import math
import multiprocessing
import os
import random
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from lightning import Callback, LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fluid_lightning.data.shapes import collate_images, image_to_tensor

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LATENT_EXTENSION = "latent.npy"
COUNTERS = ("samples", "missing_image", "missing_caption", "bad_image", "bad_latent", "shard_errors")


class SampleCounters:
    """Counters in shared memory, so DataLoader worker processes add to the same numbers.

    Created in `WebDataModule.setup` (i.e. inside each rank's process): a shared array
    can only be pickled while a worker process is being started.
    """

    def __init__(self):
        self._array = multiprocessing.Array("q", len(COUNTERS))

    def add(self, name: str, n: int = 1) -> None:
        with self._array.get_lock():
            self._array[COUNTERS.index(name)] += n

    def as_dict(self) -> dict[str, int]:
        with self._array.get_lock():
            return dict(zip(COUNTERS, self._array[:]))


class _ShardErrorHandler:
    """webdataset exception handler: report the shard, count it, keep going.

    Gives up (raises) after `max_consecutive` errors with no sample in between, so a
    resampled stream over only broken shards fails loudly instead of spinning forever.
    """

    def __init__(self, counters: SampleCounters, max_consecutive: int):
        self.counters, self.max_consecutive, self.consecutive = counters, max_consecutive, 0

    def __call__(self, exn: Exception) -> bool:
        self.counters.add("shard_errors")
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} shard errors in a row, no readable data; last: {exn!r}")
        warnings.warn(f"skipping unreadable shard data: {exn!r}", stacklevel=2)
        return True

    def passed(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Pass samples through, noting that reading works."""
        for sample in samples:
            self.consecutive = 0
            yield sample


def expand_shard_urls(urls: str | list[str]) -> list[str]:
    """Expand a shard spec into a list of URLs.

    Accepts a list or a string; strings are split on ``::`` and brace-expanded
    (``data/{00000..00099}.tar``). Then each entry that is a folder becomes its sorted
    ``*.tar`` files and each entry with ``*``/``?``/``[`` becomes its sorted glob
    matches; ``pipe:`` commands and ``scheme://`` URLs are kept as they are.
    """
    entries = [urls] if isinstance(urls, str) else list(urls)
    expanded = [u for entry in entries for u in wds.shardlists.expand_urls(str(entry))]
    result = []
    for url in expanded:
        if url.startswith("pipe:") or "://" in url:
            result.append(url)
        elif os.path.isdir(url):
            result.extend(sorted(glob.glob(os.path.join(url, "*.tar"))))
        elif any(ch in url for ch in "*?["):
            result.extend(sorted(glob.glob(url)))
        else:
            result.append(url)
    return result


def _shuffled(items: Iterator, rng: random.Random, size: int) -> Iterator:
    """Reservoir-style shuffle buffer of `size` items."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def _caption(sample: dict, caption_key: str) -> str | None:
    """Caption from ``.txt``, else from the ``.json`` field `caption_key`; None if empty."""
    text = None
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace")
    elif "json" in sample:
        try:
            text = json.loads(sample["json"]).get(caption_key)
        except (ValueError, AttributeError):
            text = None
    text = text.strip() if isinstance(text, str) else None
    return text or None


class _SampleDecoder:
    """Raw samples -> {output_key: decoded, "caption", "key"}; a sample without its payload
    (``missing_image``), without a caption (``missing_caption``) or whose payload fails to decode
    (``bad_counter``) is skipped and counted."""

    output_key: str
    bad_counter: str

    def __init__(self, caption_key: str, counters: SampleCounters):
        self.caption_key, self.counters = caption_key, counters

    def payload_key(self, sample: dict) -> str | None:
        raise NotImplementedError

    def load(self, data: bytes, rng: random.Random) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        for sample in samples:
            ext = self.payload_key(sample)
            if ext is None:
                self.counters.add("missing_image")
                continue
            caption = _caption(sample, self.caption_key)
            if caption is None:
                self.counters.add("missing_caption")
                continue
            try:
                value = self.load(sample[ext], rng)
            except Exception:  # decoders raise many types on bad bytes; any of them means skip
                self.counters.add(self.bad_counter)
                continue
            self.counters.add("samples")
            yield {self.output_key: value, "caption": caption, "key": sample["__key__"]}


class ImageDecoder(_SampleDecoder):
    """Raw sample -> {"image": [3, S, S] in [-1, 1], "caption", "key"}, or skip.

    Resizes the shorter side to `image_size` (bicubic) and crops S×S at the centre or,
    with `random_crop`, at a random offset. No horizontal flips: they would falsify
    "left of"/"right of" captions.
    """

    output_key, bad_counter = "image", "bad_image"

    def __init__(self, image_size: int, random_crop: bool, caption_key: str, counters: SampleCounters):
        super().__init__(caption_key, counters)
        self.image_size, self.random_crop = image_size, random_crop

    def payload_key(self, sample: dict) -> str | None:
        return next((e for e in IMAGE_EXTENSIONS if e in sample), None)

    def load(self, data: bytes, rng: random.Random) -> torch.Tensor:
        size = self.image_size
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # DCT-domain downscale, never below `size`
            image = image.convert("RGB")  # full decode: truncated files raise here
        width, height = image.size
        scale = size / min(width, height)
        if scale != 1:
            new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        width, height = image.size
        if self.random_crop:
            left, top = rng.randint(0, width - size), rng.randint(0, height - size)
        else:
            left, top = (width - size) // 2, (height - size) // 2
        return image_to_tensor(image.crop((left, top, left + size, top + size)))


class LatentDecoder(_SampleDecoder):
    """Raw sample -> {"latent": [N, D] float32 or [N] int64, "caption", "key"}, or skip."""

    output_key, bad_counter = "latent", "bad_latent"

    def payload_key(self, sample: dict) -> str | None:
        return LATENT_EXTENSION if LATENT_EXTENSION in sample else None

    def load(self, data: bytes, rng: random.Random) -> torch.Tensor:
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"latent dtype {array.dtype} is neither float nor integer")
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64)
        return torch.from_numpy(np.ascontiguousarray(array))


def collate_latents(samples: list[dict]) -> dict:
    return {"latent": torch.from_numpy(np.stack([s["latent"].numpy() for s in samples])),
            "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples]}


class ShardBatchStream(IterableDataset):
    """Batches from this rank's shards; see the module docstring for the plan.

    `batches_per_worker` (resampled mode) fixes the epoch length; `epoch` is bumped by
    `EpochDataLoader` in the main process and mixed into every worker's seed, so
    shard draws, shuffling and crops differ per epoch yet are reproducible.
    """

    def __init__(self, urls: list[str], decoder: Callable, collate: Callable, batch_size: int,
                 counters: SampleCounters, resampled: bool, shuffle_buffer: int, seed: int, rank: int,
                 batches_per_worker: int | None = None, partial: bool = True, length: int | None = None):
        super().__init__()
        self.urls, self.decoder, self.collate, self.batch_size = urls, decoder, collate, batch_size
        self.counters, self.resampled, self.shuffle_buffer = counters, resampled, shuffle_buffer
        self.seed, self.rank, self.batches_per_worker = seed, rank, batches_per_worker
        self.partial, self.length = partial, length
        self.epoch, self._iterations = 0, 0

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
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        self._iterations += 1  # advances across epochs in persistent workers
        rng = random.Random(f"wds:{self.seed}:{self.rank}:{worker}:{self.epoch}:{self._iterations}")
        handler = _ShardErrorHandler(self.counters, max_consecutive=max(100, 10 * len(self.urls)))
        samples = wds.tariterators.tarfile_samples(self._shards(rng, worker, num_workers), handler=handler)
        samples = handler.passed(samples)
        if self.shuffle_buffer > 1:
            samples = _shuffled(samples, rng, self.shuffle_buffer)
        batch: list[dict] = []
        emitted = 0
        for sample in self.decoder(samples, rng):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch, emitted = [], emitted + 1
                if self.batches_per_worker is not None and emitted >= self.batches_per_worker:
                    return
        if batch and self.partial:
            yield self.collate(batch)


class EpochDataLoader(DataLoader):
    """DataLoader that tells its `ShardBatchStream` which epoch is starting (this runs in
    the main process, before non-persistent workers copy the dataset)."""

    def __iter__(self):
        self.dataset.epoch += 1
        return super().__iter__()


def _resolve_rank(trainer, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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
    """

    def __init__(self, train_urls: str | list[str] | None = None, val_urls: str | list[str] | None = None,
                 kind: str = "images", image_size: int = 256, random_crop: bool = True,
                 batch_size: int = 32, num_workers: int = 4, shuffle_buffer: int = 1000,
                 resampled: bool = True, epoch_batches: int | None = None, val_batches: int | None = None,
                 caption_key: str = "caption", pin_memory: bool | None = None, persistent_workers: bool = True,
                 prefetch_factor: int | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__()
        if kind not in ("images", "latents"):
            raise ValueError(f"kind must be images|latents, got {kind!r}")
        if resampled and train_urls is not None and not epoch_batches:
            raise ValueError("resampled=True needs epoch_batches (batches per rank per epoch)")
        self.save_hyperparameters()
        self.train_urls, self.val_urls, self.kind = train_urls, val_urls, kind
        self.image_size, self.random_crop, self.batch_size = image_size, random_crop, batch_size
        self.num_workers, self.shuffle_buffer, self.resampled = num_workers, shuffle_buffer, resampled
        self.epoch_batches, self.val_batches, self.caption_key = epoch_batches, val_batches, caption_key
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.prefetch_factor, self.seed, self.rank, self.world_size = prefetch_factor, seed, rank, world_size
        self.counters: SampleCounters | None = None
        self.rank_urls: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.counters is None:
            self.counters = SampleCounters()
        self.rank, self.world_size = _resolve_rank(self.trainer, self.rank, self.world_size)
        for split, spec, resampled in (("train", self.train_urls, self.resampled),
                                       ("val", self.val_urls, bool(self.val_batches))):
            if spec is None:
                continue
            urls = expand_shard_urls(spec)
            if not urls:
                raise ValueError(f"no {split} shards match {spec!r}")
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
            collate = collate_images
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
            stream, batch_size=None, num_workers=workers,
            pin_memory=torch.cuda.is_available() if self.pin_memory is None else self.pin_memory,
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


class DataStatsLogger(Callback):
    """Logs `WebDataModule.stats()` as ``data/<counter>`` (summed over ranks) each epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "stats"):
            stats = {f"data/{k}": float(v) for k, v in datamodule.stats().items()}
            pl_module.log_dict(stats, sync_dist=True, reduce_fx="sum")
