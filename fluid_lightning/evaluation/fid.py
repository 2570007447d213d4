"""FID with a feature network of your choice (torchmetrics' FrechetInceptionDistance), and FID of a
pipeline's images against real ones (``pipeline_fid``, the `evaluate fid` command).

torchmetrics' default Inception path needs torch-fidelity (which pulls torchvision, which
does not import beside this torch) and a download, so the factory takes an `nn.Module`:
a real feature net you load yourself (e.g. a TorchScript Inception: `torch.jit.load(path)`,
wrapped to take [0, 1] images), or `TinyConvFeatures` — a fixed random conv net that is
offline and fast. FIDs from different feature nets are not comparable with each other,
and only Inception-2048 FIDs are comparable with papers.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm.auto import tqdm

from ..data.pixels import images_to_float
from ..data.webdata import WebDataModule
from ..pipeline import FluidPipeline
from ..sampling import SamplingSettings


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


def read_captions(path: str) -> list[str]:
    """One caption per line (.txt), or JSON lines with a "caption" or "prompt" field."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not path.endswith(".jsonl"):
        return [line.strip() for line in lines]
    captions = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err}); a .jsonl holds one "
                             '{"caption": ...} per line, a .txt one caption per line') from err
        captions.append(record.get("caption", record.get("prompt")))
    return captions


def iter_real_images(real: str, image_size: int, batch_size: int) -> Iterator[Tensor]:
    """Batches of real images in [0, 1]: from a folder of image files (searched recursively) or
    from WebDataset shards (a folder of .tar files, a glob or a brace pattern)."""
    files = sorted(p for p in Path(real).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if files:
        for start in range(0, len(files), batch_size):
            arrays = []
            for f in files[start:start + batch_size]:
                image = Image.open(f).convert("RGB").resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(image))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
        return
    data = WebDataModule(train_urls=real, image_size=image_size, batch_size=batch_size, num_workers=0,
                         resampled=False, epoch_batches=1, random_crop=False)
    data.setup("fit")
    for batch in data.train_dataloader():
        yield (images_to_float(batch["image"]) + 1) / 2


def pipeline_fid(pipe: FluidPipeline, prompts: list[str], real: str, feature: nn.Module | None = None,
                 image_size: int | None = None, batch_size: int = 16, sampling: SamplingSettings | None = None,
                 progress: bool = True) -> dict:
    """{"fid", "num_images"}: FID of the pipeline's images for ``prompts`` against the ``real`` images
    (the MS-COCO 30K protocol: 30K captions, 256² images), at ``image_size`` (default: the model's).
    ``feature``: the feature net (the standard FID Inception as `TorchScriptFeatures`); without it a
    random conv net is used and the value is not comparable to papers."""
    if not prompts:
        raise ValueError("no captions to generate images for")
    if feature is None:
        warnings.warn("no --feature given: FID uses a random conv net; compare only runs scored the same way",
                      stacklevel=2)
    device = pipe.device
    metric = make_fid(feature).to(device)
    size = image_size or pipe.tokenizer.image_size
    seen = 0
    for images in tqdm(iter_real_images(real, size, batch_size), desc="real", disable=not progress):
        images = images[: len(prompts) - seen]
        metric.update(images.to(device), real=True)
        seen += len(images)
        if seen >= len(prompts):
            break
    if seen < len(prompts):
        warnings.warn(f"{seen} real images for {len(prompts)} generated ones: FID of unequal sets is biased",
                      stacklevel=2)
    for fake in pipe.generate_batches(prompts, batch_size, sampling, progress=progress):
        if fake.shape[-1] != size:
            fake = torch.nn.functional.interpolate(fake, size=(size, size), mode="bicubic").clamp(0, 1)
        metric.update(fake.to(device), real=False)
    return {"fid": float(metric.compute()), "num_images": len(prompts)}
