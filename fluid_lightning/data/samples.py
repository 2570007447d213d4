"""Samples from WebDataset shards: shard lists, exact skip counters shared with DataLoader
workers, a shuffle buffer, and the image / cached-latent decoders that skip bad samples (used by
`webdata.WebDataModule` and `tokenizer cache`)."""

from __future__ import annotations

import glob
import io
import json
import multiprocessing
import os
import random
import warnings
from collections.abc import Iterator

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
JPEG_MAGIC = b"\xff\xd8"
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


class ShardErrorHandler:
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


def is_remote(url: str) -> bool:
    """A ``pipe:`` command or a ``scheme://`` URL, not a local path."""
    return url.startswith("pipe:") or "://" in url


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
        if is_remote(url):
            result.append(url)
        elif os.path.isdir(url):
            result.extend(sorted(glob.glob(os.path.join(url, "*.tar"))))
        elif any(ch in url for ch in "*?["):
            result.extend(sorted(glob.glob(url)))
        else:
            result.append(url)
    return result


def shuffled(items: Iterator, rng: random.Random, size: int) -> Iterator:
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

    def load(self, data: bytes, rng: random.Random) -> np.ndarray | torch.Tensor:
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
    """Raw sample -> {"image": uint8 [S, S, 3] (numpy, RGB), "caption", "key"}, or skip.

    Resizes the shorter side to `image_size` (bicubic) and crops S×S at the centre or,
    with `random_crop`, at a random offset. No horizontal flips: they would falsify
    "left of"/"right of" captions. JPEGs are decoded by libjpeg-turbo through simplejpeg (the
    pixels PIL gives, ~1.3x as fast: `_decode_jpeg`), other formats by PIL. A JPEG at least
    twice the size is decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode: the DCT does the
    first downscale, never below S) and then resized. The crop is a view of the decoded
    pixels: `pixels.collate_pixels` makes the one copy, into the batch.
    """

    output_key, bad_counter = "image", "bad_image"

    def __init__(self, image_size: int, random_crop: bool, caption_key: str, counters: SampleCounters):
        super().__init__(caption_key, counters)
        self.image_size, self.random_crop = image_size, random_crop

    def payload_key(self, sample: dict) -> str | None:
        return next((e for e in IMAGE_EXTENSIONS if e in sample), None)

    def load(self, data: bytes, rng: random.Random) -> np.ndarray:
        size = self.image_size
        pixels = _decode_jpeg(data, size) if data[:2] == JPEG_MAGIC else None
        if pixels is None:
            pixels = _decode_with_pil(data, size)
        height, width = pixels.shape[:2]
        if min(width, height) != size:
            scale = size / min(width, height)
            resized = Image.fromarray(pixels).resize(
                (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC)
            width, height = resized.size
            pixels = np.frombuffer(resized.tobytes(), np.uint8).reshape(height, width, 3)  # read-only, no copy
        if self.random_crop:
            left, top = rng.randint(0, width - size), rng.randint(0, height - size)
        else:
            left, top = (width - size) // 2, (height - size) // 2
        return pixels[top : top + size, left : left + size]


def _draft_factor(width: int, height: int, size: int) -> int:
    """PIL's draft-mode choice: the largest of 1, 2, 4, 8 that keeps both sides at least `size`."""
    most = min(width // size, height // size)
    return next(f for f in (8, 4, 2, 1) if f <= max(most, 1))


def _decode_jpeg(data: bytes, size: int) -> np.ndarray | None:
    """A JPEG as RGB uint8 [H, W, 3] by libjpeg-turbo straight into a numpy array (simplejpeg), scaled in
    the DCT by PIL's draft factor; None for other colour spaces (PIL converts CMYK its own way) and
    where libjpeg-turbo fails: PIL decides then.

    PIL decodes with the same library and settings (accurate DCT, fancy upsampling), so the pixels are
    the same; it only stores RGB as 4 bytes per pixel and packs them to 3 on the way out."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray"):
            return None
        factor = _draft_factor(width, height, size)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-height // factor),
                                      min_width=-(-width // factor), min_factor=factor)
    except ValueError:  # also what a damaged file raises: PIL's decode then fails and counts it
        return None


def _decode_with_pil(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # DCT-domain downscale by _draft_factor, never below `size`
        image.load()  # the full decode: truncated files raise here
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, 3)


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


