"""uint8 image batches: converted where they are consumed, they equal the float batches the loader
delivered before, exactly; JPEG draft-mode decoding stays within JPEG's own error."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fluid_lightning.data import samples
from fluid_lightning.data.pixels import collate_pixels, images_to_float
from fluid_lightning.data.samples import ImageDecoder, SampleCounters
from fluid_lightning.data.shapes import collate_images, image_to_tensor
from fluid_lightning.data.shards import ShardSink
from fluid_lightning.data.webdata import WebDataModule


class FloatImageDecoder(ImageDecoder):
    """The decoder as it was before uint8 batches (commit 135a095), for reference."""

    def load(self, data: bytes, rng: random.Random) -> torch.Tensor:
        size = self.image_size
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))
            image = image.convert("RGB")
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


def _encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour waves plus mild noise (benchmarks/bench_datamodule.py's photo-like images, any size)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)), np.cos(y * rng.uniform(1, 6) + rng.uniform(0, 6)),
                     np.sin((x + y) * rng.uniform(1, 6))], -1)
    return (base * 80 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory):
    """Every path through the decoder at image_size 32: exact size, resize, draft + resize, other modes."""
    rng = np.random.default_rng(0)
    kinds = [((32, 32), "JPEG", None), ((48, 48), "JPEG", None), ((100, 70), "JPEG", None),  # 100x70: draft
             ((70, 140), "JPEG", None), ((64, 64), "JPEG", "L"), ((40, 60), "PNG", "RGBA"), ((33, 35), "PNG", "P"),
             ((80, 80), "JPEG", "CMYK"), ((32, 50), "WEBP", None)]
    with ShardSink(tmp_path_factory.mktemp("mixed"), shard_size=6) as sink:
        for i in range(24):
            (width, height), fmt, mode = kinds[i % len(kinds)]
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
            sink.write(f"{i:04d}", {ext: _encoded(_photo(rng, width, height), fmt, mode), "txt": f"image {i}"})
    return sink.shards


def test_uint8_to_float_is_the_per_image_conversion_of_before_for_every_value():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    before = image_to_tensor(Image.fromarray(values[0].permute(1, 2, 0).numpy()))  # numpy float32, per image
    assert torch.equal(images_to_float(values)[0], before)
    assert images_to_float(values).dtype == torch.float32 and images_to_float(values).is_contiguous()
    floats = torch.rand(2, 3, 4, 4)
    assert images_to_float(floats) is floats  # already converted (ShapesDataModule, image_dtype="float32")
    assert images_to_float(values).min() == -1 and images_to_float(values).max() == 1


@pytest.mark.parametrize("random_crop", [True, False], ids=["random-crop", "centre-crop"])
def test_uint8_batches_converted_equal_the_float_batches_of_before_exactly(mixed_shards, random_crop):
    def batches(image_dtype: str | None) -> list[dict]:
        dm = WebDataModule(mixed_shards, image_size=32, batch_size=5, num_workers=0, shuffle_buffer=4,
                           resampled=False, random_crop=random_crop, pin_memory=False, persistent_workers=False,
                           image_dtype=image_dtype or "float32")
        stream = dm._stream("train", train=True)
        if image_dtype is None:  # the loader as it was: float tensors per image, stacked
            stream.decoder = FloatImageDecoder(32, random_crop, "caption", dm.counters)
            stream.collate = collate_images
        return list(stream)

    before, pixels, floats = batches(None), batches("uint8"), batches("float32")
    assert len(before) == len(pixels) == 5 and sum(len(b["key"]) for b in pixels) == 24
    for old, new, float_batch in zip(before, pixels, floats):
        assert new["key"] == old["key"] and new["caption"] == old["caption"]
        assert new["image"].dtype == torch.uint8 and new["image"].shape == old["image"].shape
        assert torch.equal(images_to_float(new["image"]), old["image"])
        assert torch.equal(float_batch["image"], old["image"]) and float_batch["image"].is_contiguous()


def test_a_channels_last_batch_goes_through_pinning_and_stays_exact():
    rng = np.random.default_rng(1)
    samples = [{"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "caption": "c", "key": str(i)}
               for i in range(3)]
    batch = collate_pixels(samples)["image"]
    assert batch.shape == (3, 3, 8, 8) and batch.is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([image_to_tensor(Image.fromarray(s["image"])) for s in samples])
    assert torch.equal(images_to_float(batch), expected)
    assert torch.equal(images_to_float(batch.contiguous()), expected)
    with pytest.raises(ValueError, match="image_dtype"):
        collate_pixels(samples, image_dtype="float16")


@pytest.mark.parametrize("width,height,mode,size", [(32, 32, None, 32), (100, 70, None, 32), (1024, 768, None, 256),
                                                    (300, 90, None, 32), (64, 64, "L", 16), (80, 80, "CMYK", 32)])
def test_jpegs_decode_through_libjpeg_turbo_to_the_pixels_pil_gives(width, height, mode, size):
    data = _encoded(_photo(np.random.default_rng(width), width, height), "JPEG", mode)
    fast, pil = samples._decode_jpeg(data, size), samples._decode_with_pil(data, size)
    if mode == "CMYK":  # PIL converts CMYK its own way: left to it
        assert fast is None
    else:
        assert fast is not None and fast.shape == pil.shape and np.array_equal(fast, pil)
    assert samples._decode_jpeg(data[: len(data) // 2], size) is None  # cut short: PIL raises, it is counted


# Draft mode decodes a JPEG at 1/2, 1/4 or 1/8 scale in the DCT, then resizes the rest of the way: its
# result is not bit-equal to a full decode + bicubic resize. Measured on these photo-like q90 images
# (12 seeds): mean |difference| <= 1.81/255 when the DCT does the whole reduction (an exact 2x) and
# <= 0.9/255 when bicubic does part of it, while the q90 JPEG itself is 2.9/255 away from the
# uncompressed image at the target size. So: under 2/255, and under the JPEG's own error.
@pytest.mark.parametrize("width,height,size", [(512, 512, 256), (600, 512, 256), (1024, 768, 256),
                                               (800, 600, 128), (96, 80, 32)])
def test_draft_decoding_stays_within_jpeg_tolerance_of_a_full_decode(width, height, size):
    rng = np.random.default_rng(width + height)
    original = _photo(rng, width, height)
    data = _encoded(original, "JPEG")
    with Image.open(io.BytesIO(data)) as probe:
        probe.draft("RGB", (size, size))
        assert probe.size[0] < width  # the draft path is the one under test
    decoder = ImageDecoder(size, random_crop=False, caption_key="caption", counters=SampleCounters())
    drafted = decoder.load(data, random.Random(0)).astype(np.float64)

    def full(image: Image.Image) -> np.ndarray:  # the shorter side to `size` (bicubic), centre crop
        scale = size / min(width, height)
        image = image.convert("RGB").resize((max(size, round(width * scale)), max(size, round(height * scale))),
                                            Image.Resampling.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float64)

    full_decode = full(Image.open(io.BytesIO(data)))
    error = np.abs(drafted - full_decode).mean()
    jpeg_error = np.abs(full_decode - full(Image.fromarray(original))).mean()
    assert drafted.shape == (size, size, 3)
    assert 0 < error < 2.0, error
    assert error < jpeg_error, (error, jpeg_error)


def test_batches_from_worker_processes_hold_the_same_pixels(mixed_shards):
    """Workers stack straight into shared memory; the batches that arrive are the in-process ones."""
    def images_by_key(workers: int, image_dtype: str) -> dict[str, torch.Tensor]:
        dm = WebDataModule(mixed_shards, image_size=32, batch_size=5, num_workers=workers, shuffle_buffer=0,
                           resampled=False, random_crop=False, pin_memory=False, persistent_workers=False,
                           image_dtype=image_dtype)
        return {key: image for batch in dm.train_dataloader() for key, image in zip(batch["key"], batch["image"])}

    for image_dtype in ("uint8", "float32"):
        in_process, from_workers = images_by_key(0, image_dtype), images_by_key(2, image_dtype)
        assert sorted(in_process) == sorted(from_workers) and len(in_process) == 24
        assert all(torch.equal(in_process[key], from_workers[key]) for key in in_process)
