"""FluidPipeline: prompts → images, from a training checkpoint or from modules in memory."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from .lit.ema import dtype_of
from .models.generator import FluidGenerator
from .models.text import FrozenT5
from .models.tokenizers import ImageTokenizer


class FluidPipeline:
    """Holds a generator (the EMA weights when loaded from a checkpoint), its tokenizer and its
    text encoder. ``pipe(prompts, ...)`` returns PIL images; ``pipe.generate`` returns a tensor."""

    def __init__(self, generator: FluidGenerator, tokenizer: ImageTokenizer, text_encoder: FrozenT5):
        self.generator = generator
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> FluidPipeline:
        from .lit.generator_module import GeneratorModule

        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a sharded (FSDP2) checkpoint; make one file first: "
                f"python -m fluid_lightning checkpoint consolidate {path} model.safetensors"
            )
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}; pass the .ckpt file written by `fit` (see runs/)")
        if path.suffix == ".safetensors":  # written by `checkpoint consolidate`: weights + config
            from .checkpointing import load_consolidated

            return load_consolidated(path).pipeline().to(device)
        from .checkpointing import load_module

        module = load_module(GeneratorModule, path)
        return module.pipeline().to(device)

    def to(self, device: str | torch.device) -> FluidPipeline:
        for part in (self.generator, self.tokenizer, self.text_encoder):
            part.to(device).eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        num_steps: int = 64,
        cfg: float = 1.0,
        cfg_schedule: Literal["constant", "linear"] = "linear",
        temperature: float = 1.0,
        top_k: int | None = None,
        use_kv_cache: bool = True,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Images [B, 3, H, W] in [0, 1]. The same ``seed`` gives the same images."""
        if isinstance(prompts, str):
            prompts = [prompts]
        was_training = self.generator.training
        self.generator.eval()
        if generator is None and seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        try:
            text, text_mask = self.text_encoder(prompts)
            tokens = self.generator.sample(
                text.to(dtype_of(self.generator)),  # parts may differ: under bf16-true the EMA stays float32
                text_mask,
                num_steps=num_steps,
                cfg=cfg,
                cfg_schedule=cfg_schedule,
                temperature=temperature,
                top_k=top_k,
                use_kv_cache=use_kv_cache,
                generator=generator,
                progress=progress,
            )
            images = self.tokenizer.decode(tokens.to(dtype_of(self.tokenizer)) if tokens.is_floating_point() else tokens)
        finally:
            self.generator.train(was_training)
        return ((images.float() + 1) / 2).clamp(0, 1)

    def __call__(self, prompts: list[str] | str, **kwargs) -> list[Image.Image]:
        return to_pil(self.generate(prompts, **kwargs))

    def generate_batches(
        self, prompts: list[str], batch_size: int = 16, seed: int = 0, progress: bool = False, **sample_kwargs
    ) -> Iterator[Tensor]:
        """``generate`` over many prompts, ``batch_size`` at a time, with one seeded generator
        running through all batches (a rerun repeats the images); yields [b, 3, H, W] in [0, 1]."""
        generator = torch.Generator(self.device).manual_seed(seed)
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress or len(starts) < 2):
            yield self.generate(
                prompts[start : start + batch_size], generator=generator, progress=progress, **sample_kwargs
            )


def to_pil(images: Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] → PIL images."""
    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images into one, row by row."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or min(len(images), max(1, int(len(images) ** 0.5 + 0.999)))
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_sampling_args(parser, steps: int = 64) -> None:
    """The sampling options shared by the `sample` and `evaluate` commands."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=positive_int, default=steps, help="sampling steps (random order; raster takes N)")
    parser.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--cfg-schedule", choices=["linear", "constant"], default="linear")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=positive_int, default=None, help="discrete tokens only")
    parser.add_argument("--no-kv-cache", action="store_true", help="raster order: recompute the prefix each step")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def sampling_kwargs(ns) -> dict:
    """`generate_batches` keyword arguments from the options of `add_sampling_args`."""
    return {
        "num_steps": ns.steps, "cfg": ns.cfg, "cfg_schedule": ns.cfg_schedule, "temperature": ns.temperature,
        "top_k": ns.top_k, "use_kv_cache": not ns.no_kv_cache, "batch_size": ns.batch_size, "seed": ns.seed,
    }


def default_device(device: str | None = None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps)") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    return device
