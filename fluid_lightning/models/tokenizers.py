"""Image tokenizers behind one interface.

Every tokenizer maps images in [-1, 1], shape [B, 3, H, W], to a grid of ``grid_size²`` tokens in
raster order and back:

- continuous: ``encode → [B, N, token_dim]`` float, ``decode`` inverts it;
- discrete: ``encode → [B, N]`` long indices into ``vocab_size`` codes.

The pixel tokenizers here need no training: pixel patches as continuous tokens (pixel-space MAR)
and a fixed colour palette as discrete codes (iGPT-style). Learned KL-VAE / VQ tokenizers share
the same interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] → [B, (H/p)·(W/p), p·p·C], raster order over the patch grid."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, patch_size: int, channels: int) -> Tensor:
    """Exact inverse of :func:`patchify` for square grids."""
    b, n, _ = tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    p = patch_size
    x = tokens.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, g * p, g * p)


class ImageTokenizer(nn.Module):
    """Shared attributes: ``image_size``, ``grid_size``, ``num_tokens``, ``discrete``, and
    ``token_dim`` (continuous) or ``vocab_size`` (discrete)."""

    discrete: bool = False
    image_size: int
    grid_size: int
    token_dim: int | None = None
    vocab_size: int | None = None

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != self.image_size:
            raise ValueError(
                f"{type(self).__name__} expects images [B, 3, {self.image_size}, {self.image_size}], got "
                f"{tuple(images.shape)}; set the data's image_size to the tokenizer's"
            )

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError


class PixelPatchTokenizer(ImageTokenizer):
    """Continuous tokens that are raw pixel patches (p·p·3 values each)."""

    def __init__(self, image_size: int = 64, patch_size: int = 4):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.token_dim = patch_size * patch_size * 3

    def encode(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return patchify(images, self.patch_size)

    def decode(self, tokens: Tensor) -> Tensor:
        return unpatchify(tokens, self.patch_size, 3).clamp(-1, 1)


class PaletteTokenizer(ImageTokenizer):
    """Discrete tokens: each p×p patch's mean colour, quantised to a fixed palette of
    ``levels`` values per channel (``levels³`` codes; 8 levels = iGPT's 9-bit colour)."""

    discrete = True

    def __init__(self, image_size: int = 64, patch_size: int = 4, levels: int = 8):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if levels < 2:
            raise ValueError("PaletteTokenizer needs levels >= 2")
        self.image_size = image_size
        self.patch_size = patch_size
        self.levels = levels
        self.grid_size = image_size // patch_size
        self.vocab_size = levels**3

    def encode(self, images: Tensor) -> Tensor:
        self.check_images(images)
        mean = F.avg_pool2d(images.float(), self.patch_size)  # [B, 3, g, g]
        q = ((mean.clamp(-1, 1) + 1) / 2 * (self.levels - 1)).round().long()  # nearest palette level
        index = (q[:, 0] * self.levels + q[:, 1]) * self.levels + q[:, 2]
        return index.flatten(1)

    def palette(self, index: Tensor) -> Tensor:
        """Code indices [...] → RGB in [-1, 1], shape [..., 3]."""
        levels = self.levels
        rgb = torch.stack([index // (levels * levels), (index // levels) % levels, index % levels], dim=-1)
        return rgb.float() / (levels - 1) * 2 - 1

    def decode(self, tokens: Tensor) -> Tensor:
        b, n = tokens.shape
        g = self.grid_size
        colours = self.palette(tokens).reshape(b, g, g, 3).permute(0, 3, 1, 2)
        return F.interpolate(colours, scale_factor=self.patch_size, mode="nearest")
