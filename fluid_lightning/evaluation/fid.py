"""FID with a feature network of your choice (torchmetrics' FrechetInceptionDistance).

torchmetrics' default Inception path needs torch-fidelity (which pulls torchvision, which
does not import beside this torch) and a download, so the factory takes an `nn.Module`:
a real feature net you load yourself (e.g. a TorchScript Inception: `torch.jit.load(path)`,
wrapped to take [0, 1] images), or `TinyConvFeatures` — a fixed random conv net that is
offline and fast. FIDs from different feature nets are not comparable with each other,
and only Inception-2048 FIDs are comparable with papers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance


class TinyConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net: [B, 3, H, W] in [0, 1] → [B, num_features].

    Random conv features still separate image statistics (colour, edges, texture), which is
    what tests and CPU smoke runs need. Seeded, so two instances give the same features."""

    def __init__(self, num_features: int = 64, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        generator = torch.Generator().manual_seed(seed)
        widths = (3, 16, 32, num_features)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / (9 * c_in)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.GELU()]
        self.net = nn.Sequential(*layers).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> TinyConvFeatures:
        return super().train(False)  # a fixed feature extractor: never in training mode

    def forward(self, images: Tensor) -> Tensor:
        images = images.float()
        if images.max() > 1.5:  # uint8-range input (torchmetrics' probe without normalize)
            images = images / 255.0
        return self.net(images * 2 - 1).mean(dim=(2, 3))


def make_fid(feature: nn.Module | None = None, reset_real_features: bool = False) -> FrechetInceptionDistance:
    """FID metric fed with float images in [0, 1] ([B, 3, H, W]).

    ``feature``: the feature network (default `TinyConvFeatures()`); it sees the images as
    given, so it must accept [0, 1] floats at your resolution. ``reset_real_features=False``
    keeps the real statistics across `reset()`, so a callback computes them once."""
    feature = TinyConvFeatures() if feature is None else feature
    return FrechetInceptionDistance(feature=feature, reset_real_features=reset_real_features, normalize=True,
                                    sync_on_compute=False)
