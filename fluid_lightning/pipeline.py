"""FluidPipeline: prompts → images, from a checkpoint file or from modules in memory.

    pipe = FluidPipeline.from_checkpoint("runs/quickstart/checkpoints/last.ckpt")
    images = pipe(["a photo of a red circle"], steps=32, cfg=3.0)      # PIL images
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpointing import load
from .data.pixels import make_grid, to_pil
from .lit.generator_module import GeneratorModule
from .models.generator import FluidGenerator
from .sampling import SamplingSettings, generate_images

__all__ = ["FluidPipeline", "make_grid", "to_pil"]  # the image helpers live in data/pixels.py


class FluidPipeline:
    """Holds a generator (the EMA weights when built from a module or checkpoint), its tokenizer, its
    text encoder and the sampling settings used unless a call changes them."""

    def __init__(self, generator: FluidGenerator, tokenizer: nn.Module, text_encoder: nn.Module,
                 sampling: SamplingSettings | None = None):
        self.generator = generator
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.sampling = sampling or SamplingSettings()

    @classmethod
    def from_module(cls, module: GeneratorModule) -> FluidPipeline:
        return cls(module.sampling_generator, module.tokenizer, module.text_encoder, module.sampling)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> FluidPipeline:
        """From a ``.ckpt`` written by ``fit`` or a ``.safetensors`` written by ``checkpoint consolidate``."""
        return cls.from_module(load(GeneratorModule, path)).to(device)

    def to(self, device: str | torch.device) -> FluidPipeline:
        for part in (self.generator, self.tokenizer, self.text_encoder):
            part.to(device).eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def settings(self, sampling: SamplingSettings | None = None, **changes) -> SamplingSettings:
        """``sampling`` (default: the pipeline's) with ``changes`` to its fields (``steps=32, cfg=3.0``)."""
        return (sampling or self.sampling).replace(**changes)

    def generate(self, prompts: list[str] | str, sampling: SamplingSettings | None = None,
                 rng: torch.Generator | None = None, progress: bool = False,
                 on_step: Callable[[Tensor, Tensor], None] | None = None, **changes) -> Tensor:
        """Images [B, 3, H, W] in [0, 1]. The same seed gives the same images. ``on_step(tokens,
        still_masked)`` sees the tokens after every sampling step (decode them to watch a sample form)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return generate_images(self.generator, self.tokenizer, self.text_encoder, prompts,
                               self.settings(sampling, **changes), rng, progress, on_step)

    def __call__(self, prompts: list[str] | str, sampling: SamplingSettings | None = None, **changes) -> list[Image.Image]:
        return to_pil(self.generate(prompts, sampling, **changes))

    def generate_batches(self, prompts: list[str], batch_size: int = 16, sampling: SamplingSettings | None = None,
                         progress: bool = False, **changes) -> Iterator[Tensor]:
        """``generate`` over many prompts, ``batch_size`` at a time, with one seeded random stream running
        through all batches (a rerun repeats the images); yields [b, 3, H, W] in [0, 1]."""
        settings = self.settings(sampling, **changes)
        rng = settings.rng(self.device)
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress or len(starts) < 2):
            yield self.generate(prompts[start : start + batch_size], settings, rng=rng, progress=progress)
