"""FID with a feature network of your choice (torchmetrics' FrechetInceptionDistance); the `evaluate fid`
command (``commands/evaluate.py``) feeds it a checkpoint's images and real ones.

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


def unit_range(images: Tensor) -> Tensor:
    """Float images in [0, 1]; uint8-range input (torchmetrics probes the feature net with it when
    ``normalize`` is off) is rescaled."""
    images = images.float()
    return images / 255.0 if bool(images.max() > 1.5) else images


class TinyConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net: [B, 3, H, W] in [0, 1] → [B, num_features].

    Random conv features still separate image statistics (colour, edges, texture), which is
    what tests and CPU smoke runs need. Seeded, so two instances give the same features."""

    def __init__(self, num_features: int = 64, seed: int = 0):
        super().__init__()
        self.num_features = num_features
        rng = torch.Generator().manual_seed(seed)
        widths = (3, 16, 32, num_features)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=rng) * (2 / (9 * c_in)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.GELU()]
        self.net = nn.Sequential(*layers).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> TinyConvFeatures:
        return super().train(False)  # a fixed feature extractor: never in training mode

    def forward(self, images: Tensor) -> Tensor:
        images = unit_range(images)
        return self.net(images * 2 - 1).mean(dim=(2, 3))


def make_fid(feature: nn.Module | None = None, reset_real_features: bool = False) -> FrechetInceptionDistance:
    """FID metric fed with float images in [0, 1] ([B, 3, H, W]).

    ``feature``: the feature network (default `TinyConvFeatures()`); it sees the images as
    given, so it must accept [0, 1] floats at your resolution. ``reset_real_features=False``
    keeps the real statistics across `reset()`, so a callback computes them once."""
    feature = TinyConvFeatures() if feature is None else feature
    return FrechetInceptionDistance(feature=feature, reset_real_features=reset_real_features, normalize=True,
                                    sync_on_compute=False)


class TorchScriptFeatures(nn.Module):
    """A feature network saved as TorchScript, e.g. the standard FID Inception-v3
    (``pt_inception-2015-12-05-6726825d.pth`` from the StyleGAN2-ADA/clean-fid releases), which
    takes [B, 3, H, W] pixel values in [0, 255] and returns 2048-d pool features. Images come in
    as [0, 1] floats and are scaled by ``input_scale``; ``call_kwargs`` go to its forward (for
    that file: ``{"return_features": true}``)."""

    def __init__(self, path: str, input_scale: float = 255.0, call_kwargs: dict | None = None,
                 num_features: int | None = None):
        super().__init__()
        try:
            self.net = torch.jit.load(path, map_location="cpu").eval()
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise FileNotFoundError(
                f"no TorchScript feature network at {path!r}: download the FID Inception weights on a machine "
                "with network access and pass their local path"
            ) from err
        self.input_scale, self.call_kwargs = input_scale, dict(call_kwargs or {})
        if num_features is None:  # torchmetrics needs the width; probe it once
            with torch.no_grad():
                num_features = self.forward(torch.zeros(1, 3, 64, 64)).shape[-1]
        self.num_features = num_features

    def train(self, mode: bool = True) -> TorchScriptFeatures:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        images = unit_range(images)
        return self.net(images * self.input_scale, **self.call_kwargs).flatten(1)
