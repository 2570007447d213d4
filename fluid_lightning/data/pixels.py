"""Image batches as 8-bit pixels or as the [-1, 1] floats the models take.

`WebDataModule` delivers ``batch["image"]`` as uint8 [B, 3, S, S] by default (``image_dtype="uint8"``):
a quarter of the bytes to build, pass between processes, pin and copy to the device, and no float
arithmetic in the loader. Whatever consumes a batch converts it with `images_to_float`, on the device
the batch is already on; float batches (`ShapesDataModule`, ``image_dtype="float32"``) pass through.
The conversion is the one the loader used to do per image (``v * float32(1/127.5) - 1`` in float32), so
a converted uint8 batch equals the float batch of the same images exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SCALE = 1 / 127.5  # float32 arithmetic: v * float32(SCALE) - 1, as shapes.image_to_tensor does


def images_to_float(images: Tensor) -> Tensor:
    """uint8 pixels [..., 3, H, W] → contiguous float32 in [-1, 1] on the same device; floats unchanged."""
    if images.dtype != torch.uint8:
        return images
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    out.copy_(images)  # one pass: converts and, for a channels-last batch, lays it out as [B, 3, H, W]
    return out.mul_(SCALE).sub_(1.0)


def collate_pixels(samples: list[dict], image_dtype: str = "uint8") -> dict:
    """Samples whose ``"image"`` is uint8 [S, S, 3] (`samples.ImageDecoder`) → the batch contract.

    One copy: the images are stacked as [B, S, S, 3] and handed over as the [B, 3, S, S] view of that
    (channels-last memory, `torch.channels_last`), which is what JPEG decoding produces; `images_to_float`
    returns an ordinary contiguous float batch. ``image_dtype="float32"``: converted here instead, contiguous.
    """
    pixels = np.stack([s["image"] for s in samples])
    if image_dtype == "uint8":
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    elif image_dtype == "float32":
        array = np.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=np.float32)
        np.multiply(pixels.transpose(0, 3, 1, 2), np.float32(SCALE), out=array)
        array -= np.float32(1.0)
        images = torch.from_numpy(array)
    else:
        raise ValueError(f"image_dtype must be uint8|float32, got {image_dtype!r}")
    return {"image": images, "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples]}
