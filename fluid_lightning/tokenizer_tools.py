"""Tokenizer work outside training (the `tokenizer` command calls these): load and export tokenizer
folders, latent statistics, latent caches, reconstruction metrics.

A tokenizer is given as a folder (an exported tokenizer with ``tokenizer.json``, or a plain diffusers
``AutoencoderKL``/``VQModel`` folder), an LDM/SD single-file checkpoint (``.ckpt``/``.safetensors``),
or a TokenizerModule checkpoint written by ``fit``. Images come from the shapes world rendered on
the fly (``--shapes N``) or from image WebDataset shards (``--shards URLS``).

Caching is resumable by shard: output shard ``{name}.tar`` is written to a temporary folder and
renamed when complete, so a rerun skips every shard that exists.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpointing import load, safe_load
from .data.pixels import images_to_float
from .data.samples import ImageDecoder, SampleCounters, expand_shard_urls
from .data.shapes import ShapesDataset
from .data.shards import write_latent_shards
from .data.tarstream import tarfile_samples
from .lit.tokenizer_module import TokenizerModule
from .models.autoencoders import STATS_FILE, AutoencoderTokenizer, KLTokenizer, VQTokenizer, resolve_local

TOKENIZER_FILE = "tokenizer.json"
Sample = tuple[str, torch.Tensor, str]  # key, image [3, S, S] in [-1, 1], caption


# ---- tokenizers from files -----------------------------------------------------------------------
def tokenizer_path(spec: str) -> Path:
    """The tokenizer file or folder ``spec`` names (the shipped fluid_lightning/assets/... from any directory)."""
    path = Path(resolve_local(spec))
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {spec}: give an exported or diffusers folder, an LDM/SD "
                                ".ckpt/.safetensors file, or a TokenizerModule .ckpt")
    return path


def load_tokenizer(spec: str, **overrides: Any) -> AutoencoderTokenizer:
    """Tokenizer from a folder, an LDM/SD single file, or a TokenizerModule checkpoint; ``overrides``
    (image_size, group_size, ...) replace the stored constructor arguments."""
    path = tokenizer_path(spec)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if path.is_dir():
        if (path / TOKENIZER_FILE).exists():
            info = json.loads((path / TOKENIZER_FILE).read_text(encoding="utf-8"))
            cls = {"KLTokenizer": KLTokenizer, "VQTokenizer": VQTokenizer}[info["class"]]
            return cls(pretrained=str(path), **{**info["init_args"], **overrides})
        kind = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_class_name")
        cls = VQTokenizer if kind == "VQModel" else KLTokenizer
        return cls(pretrained=str(path), **overrides)
    if path.suffix == ".ckpt":
        ckpt = safe_load(path, mmap=True)
        if "hyper_parameters" in ckpt and any(k.startswith("tokenizer.") for k in ckpt.get("state_dict", {})):
            return load(TokenizerModule, path).sampling_tokenizer
    return KLTokenizer(checkpoint=str(path), **overrides)


def export_tokenizer(tokenizer: AutoencoderTokenizer, out: str | os.PathLike) -> Path:
    """Write a folder that `load_tokenizer` (and ``KLTokenizer(pretrained=...)``) reads: diffusers
    config + safetensors weights, ``tokenizer.json`` (our arguments) and, for KL, the latent stats."""
    out = Path(out)
    tokenizer.model.save_pretrained(out)
    init_args: dict[str, Any] = {"image_size": tokenizer.image_size}
    if isinstance(tokenizer, KLTokenizer):
        init_args.update(group_size=tokenizer.group_size, sample_posterior=tokenizer.sample_posterior)
        write_stats(out / STATS_FILE, {"shift": tokenizer.latent_shift.flatten().tolist(),
                                       "scale": tokenizer.latent_scale.flatten().tolist()})
    info = {"class": type(tokenizer).__name__, "init_args": init_args}
    (out / TOKENIZER_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def write_stats(path: str | os.PathLike, stats: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


# ---- image sources, as named shards --------------------------------------------------------------
def shapes_plan(n: int, image_size: int, seed: int = 0, stream: str = "train",
                shard_size: int = 1000) -> list[tuple[str, Callable[[], Iterator[Sample]]]]:
    """The shapes world (the scenes `ShapesDataModule(seed=seed)` renders for `stream`) in shards."""
    dataset = ShapesDataset(n, image_size=image_size, seed=seed, stream=stream)

    def shard(start: int) -> Iterator[Sample]:
        for index in range(start, min(n, start + shard_size)):
            item = dataset[index]
            yield item["key"], item["image"], item["caption"]

    return [(f"{k:05d}", (lambda s=start: shard(s))) for k, start in enumerate(range(0, n, shard_size))]


def shards_plan(urls: str | list[str], image_size: int) -> list[tuple[str, Callable[[], Iterator[Sample]]]]:
    """Image WebDataset shards (centre crops at `image_size`); output shards keep the input names."""
    decoder = ImageDecoder(image_size, random_crop=False, caption_key="caption", counters=SampleCounters())

    def shard(url: str) -> Iterator[Sample]:
        for sample in decoder(tarfile_samples([{"url": url}]), random.Random(0)):
            pixels = torch.from_numpy(np.array(sample["image"].transpose(2, 0, 1), order="C"))  # [3, S, S] uint8
            yield sample["key"], images_to_float(pixels), sample["caption"]

    return [(Path(url).name.removesuffix(".tar"), (lambda u=url: shard(u))) for url in expand_shard_urls(urls)]


def _batches(samples: Iterator[Sample], batch_size: int) -> Iterator[tuple[list[str], torch.Tensor, list[str]]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield [s[0] for s in batch], torch.stack([s[1] for s in batch]), [s[2] for s in batch]
            batch = []
    if batch:
        yield [s[0] for s in batch], torch.stack([s[1] for s in batch]), [s[2] for s in batch]


# ---- the work --------------------------------------------------------------------------------------
@torch.no_grad()
def compute_latent_stats(tokenizer: KLTokenizer, plan, batch_size: int = 32, max_images: int | None = None,
                         per_channel: bool = True, shift: bool = True, progress: bool = True) -> dict:
    """shift/scale that make the tokens zero-mean, unit-variance over the images: per latent channel
    or one value; ``shift=False`` keeps zero shift and scales by 1/RMS (SD's and MAR's convention)."""
    if not isinstance(tokenizer, KLTokenizer):
        raise ValueError("latent statistics are for continuous (KL) tokenizers")
    device = tokenizer.latent_scale.device
    total = torch.zeros(3, tokenizer.latent_channels, dtype=torch.float64)  # count, sum, sum of squares
    seen = 0
    bar = tqdm(desc="stats", unit="img", total=max_images, disable=not progress)
    for _, samples in plan:
        for _, images, _ in _batches(samples(), batch_size):
            if max_images is not None:
                images = images[: max_images - seen]
            z = tokenizer.encode_latents(images.to(device)).double().cpu().transpose(0, 1).flatten(1)
            total += torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), (z * z).sum(1)])
            seen += images.shape[0]
            bar.update(images.shape[0])
            if max_images is not None and seen >= max_images:
                break
        if max_images is not None and seen >= max_images:
            break
    bar.close()
    if seen == 0:
        raise ValueError("no images to compute statistics from")
    count, s1, s2 = total if per_channel else total.sum(1, keepdim=True)
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(1e-12).sqrt()
    rms = (s2 / count).sqrt()
    return {"shift": (mean if shift else torch.zeros_like(mean)).tolist(),
            "scale": (1 / (std if shift else rms)).tolist(),
            "mean": mean.tolist(), "std": std.tolist(), "num_images": seen,
            "sample_posterior": tokenizer.sample_posterior, "source": tokenizer.source}


@torch.no_grad()
def cache_latents(tokenizer: AutoencoderTokenizer, plan, out: str | os.PathLike, batch_size: int = 32,
                  dtype: str = "float16", progress: bool = True) -> dict:
    """Encode every shard of `plan` to ``{out}/{name}.tar`` (``{key}.latent.npy`` + ``{key}.txt``,
    read by ``WebDataModule(kind="latents")``); shards already there are skipped (resume)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(tokenizer.parameters()).device
    # Codes fit 16 bits for vocabularies up to 65536; float16 halves the size of continuous latents.
    np_dtype = (np.uint16 if tokenizer.vocab_size <= 65536 else np.int32) if tokenizer.discrete else np.dtype(dtype)
    written, skipped, shards = 0, 0, []

    def encoded(samples: Iterator[Sample]) -> Iterator[tuple[str, np.ndarray, str]]:
        for keys, images, captions in _batches(samples, batch_size):
            tokens = tokenizer.encode(images.to(device)).cpu().numpy().astype(np_dtype)
            yield from zip(keys, tokens, captions)

    for name, samples in tqdm(plan, desc="cache", unit="shard", disable=not progress):
        final = out / f"{name}.tar"
        if final.exists():
            skipped += 1
            shards.append(str(final))
            continue
        tmp = out / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)  # a partial shard from an interrupted run
        stats = write_latent_shards(encoded(samples()), tmp, shard_size=2**62)
        if stats["written"]:
            os.replace(stats["shards"][0], final)
            written += stats["written"]
            shards.append(str(final))
        shutil.rmtree(tmp)
    info = {"written": written, "skipped_shards": skipped, "shards": shards,
            "tokenizer": {"class": type(tokenizer).__name__, "source": tokenizer.source,
                          "num_tokens": tokenizer.num_tokens, "discrete": tokenizer.discrete,
                          "token_dim": tokenizer.token_dim, "vocab_size": tokenizer.vocab_size}}
    write_stats(out / "stats.json", info)
    return info


@torch.no_grad()
def reconstruction_metrics(tokenizer: AutoencoderTokenizer, plan, batch_size: int = 32, progress: bool = True) -> dict:
    """Mean PSNR (dB, images in [-1, 1]) and L1 of encode → decode; for VQ also the codes in use."""
    device = next(tokenizer.parameters()).device
    psnr, l1, n, used = 0.0, 0.0, 0, set()
    for _, samples in tqdm(plan, desc="reconstruct", unit="shard", disable=not progress):
        for _, images, _ in _batches(samples(), batch_size):
            images = images.to(device)
            tokens = tokenizer.encode(images)
            recon = tokenizer.decode(tokens)
            mse = ((recon - images) ** 2).flatten(1).mean(1)
            psnr += (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).sum().item()
            l1 += (recon - images).abs().flatten(1).mean(1).sum().item()
            n += images.shape[0]
            if tokenizer.discrete:
                used.update(tokens.unique().tolist())
    metrics = {"images": n, "psnr": psnr / n, "l1": l1 / n}
    if tokenizer.discrete:
        metrics["codes_used"] = f"{len(used)}/{tokenizer.vocab_size}"
    return metrics
