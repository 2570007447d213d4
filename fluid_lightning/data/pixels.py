"""Image batches as 8-bit pixels or as the [-1, 1] floats the models take, and images for people to see.

`WebDataModule` delivers ``batch["image"]`` as uint8 [B, 3, S, S] by default (``image_dtype="uint8"``):
a quarter of the bytes to build, pass between processes, pin and copy to the device, and no float
arithmetic in the loader. Whatever consumes a batch converts it with `images_to_float`, on the device
the batch is already on; float batches (`ShapesDataModule`, ``image_dtype="float32"``) pass through.
The conversion is the float loaders' own arithmetic (``v * float32(1/127.5) - 1`` in float32), so a
converted uint8 batch equals the float batch of the same images exactly. ``to_pil`` and ``make_grid``
turn model output ([B, 3, H, W] in [0, 1]) into images for people.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import get_worker_info

SCALE = 1 / 127.5  # float32 arithmetic: v * float32(SCALE) - 1, as shapes.image_to_tensor does


def images_to_float(images: Tensor) -> Tensor:
    """uint8 pixels [..., 3, H, W] → contiguous float32 in [-1, 1] on the same device; floats unchanged."""
    if images.dtype != torch.uint8:
        return images
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    out.copy_(images)  # one pass: converts and, for a channels-last batch, lays it out as [B, 3, H, W]
    return out.mul_(SCALE).sub_(1.0)


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory from the start, as torch's
    default_collate does (the queue to the main process would otherwise copy the batch into it)."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what default_collate uses
    if get_worker_info() is None or new_shared is None:
        return torch.empty(shape, dtype=dtype)
    return torch.empty(0, dtype=dtype).set_(new_shared(math.prod(shape) * dtype.itemsize)).view(shape)


def collate_pixels(samples: list[dict], image_dtype: str = "uint8") -> dict:
    """Samples whose ``"image"`` is uint8 [S, S, 3] (`samples.ImageDecoder`) → the batch contract.

    One copy: the images are stacked as [B, S, S, 3] and handed over as the [B, 3, S, S] view of that
    (channels-last memory, `torch.channels_last`), the layout decoding produces; `images_to_float`
    returns an ordinary contiguous float batch. ``image_dtype="float32"``: converted here instead, into a
    contiguous [B, 3, S, S] float batch, by the same float32 arithmetic.
    """
    b, (h, w, c) = len(samples), samples[0]["image"].shape
    if image_dtype == "uint8":
        pixels = _batch_buffer((b, h, w, c), torch.uint8)
        np.stack([s["image"] for s in samples], out=pixels.numpy())
        images = pixels.permute(0, 3, 1, 2)
    elif image_dtype == "float32":
        images = _batch_buffer((b, c, h, w), torch.float32)
        array = images.numpy()
        for i, sample in enumerate(samples):
            np.multiply(sample["image"].transpose(2, 0, 1), np.float32(SCALE), out=array[i])
        array -= np.float32(1.0)
    else:
        raise ValueError(f"image_dtype must be uint8|float32, got {image_dtype!r}")
    return {"image": images, "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples]}


def to_pil(images: Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] → PIL images."""
    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def make_grid(images: list[Image.Image], columns: int | None = None, captions: list[str] | None = None,
              scale: int = 1) -> Image.Image:
    """Tile equally sized images into one, row by row (about square by default), each enlarged ``scale``
    times (nearest neighbour: pixels stay pixels) and, with ``captions``, its caption written under it."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or min(len(images), max(1, int(len(images) ** 0.5 + 0.999)))
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    font = ImageFont.load_default(size=12) if captions else None
    lines = [_wrap(c, font, w - 4) for c in captions] if captions else []
    text_h = (max(len(x) for x in lines) * 14 + 4) if lines else 0
    grid = Image.new("RGB", (columns * w, rows * (h + text_h)), (0, 0, 0) if not captions else (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + text_h)
        grid.paste(image.resize((w, h), Image.Resampling.NEAREST) if scale != 1 else image, (x, y))
        for k, line in enumerate(lines[i] if lines else []):
            draw.text((x + 2, y + h + 2 + 14 * k), line, fill=(0, 0, 0), font=font)
    return grid


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Words of ``text`` in lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
