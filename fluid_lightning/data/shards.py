"""Write WebDataset shards in img2dataset's layout.

Every shard is ``{prefix}{NNNNN}.tar`` holding, per sample, ``{key}.jpg`` (or
``.png``), ``{key}.txt`` (the caption) and ``{key}.json`` (metadata). Cached-latent
shards hold ``{key}.latent.npy`` + ``{key}.txt`` instead (see `write_latent_shards`).
Sources: a folder of images with same-stem ``.txt`` captions, a JSONL of
``{"image": path, "caption": str}``, or the shapes renderer. Every writer returns a
stats dict (written / skipped counts, shard paths) that the commands print.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from fluid_lightning.data.shapes import (
    evaluation_suite,
    geneval_metadata,
    render_scene,
    scene_spec_for_index,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ShardSink:
    """Rolls samples into ``{out_dir}/{prefix}{NNNNN}.tar``, `shard_size` samples each.

    Values are written as given (bytes or str); keys must not contain dots, because
    WebDataset splits a member name at its first dot into key and extension.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 1000, prefix: str = ""):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.out_dir, self.shard_size, self.prefix = Path(out_dir), shard_size, prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self.count = 0
        self._writer: wds.TarWriter | None = None

    def write(self, key: str, fields: dict[str, bytes | str]) -> None:
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.'")
        if self.count % self.shard_size == 0:
            self._roll()
        sample = {"__key__": key}
        sample.update({ext: v.encode() if isinstance(v, str) else v for ext, v in fields.items()})
        self._writer.write(sample)
        self.count += 1

    def _roll(self) -> None:
        self.close()
        path = self.out_dir / f"{self.prefix}{len(self.shards):05d}.tar"
        self.shards.append(str(path))
        self._writer = wds.TarWriter(str(path), encoder=False)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def url_pattern(self) -> str:
        """Brace pattern covering the written shards, e.g. ``out/{00000..00003}.tar``."""
        if not self.shards:
            return ""
        last = len(self.shards) - 1
        return str(self.out_dir / f"{self.prefix}{{00000..{last:05d}}}.tar")

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_folder(folder: str | os.PathLike) -> Iterator[tuple[str, str | None]]:
    """(image path, caption or None) for each image in `folder` (recursive, sorted);
    the caption is the same-stem ``.txt`` next to the image."""
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            txt = path.with_suffix(".txt")
            yield str(path), (txt.read_text(encoding="utf-8").strip() if txt.exists() else None)


def iter_jsonl(jsonl: str | os.PathLike) -> Iterator[tuple[str, str | None]]:
    """(image path, caption or None) per line of ``{"image": path, "caption": str}``;
    relative image paths are relative to the JSONL's folder."""
    base = Path(jsonl).parent
    with open(jsonl, encoding="utf-8") as fp:
        for number, line in enumerate(fp, 1):
            if line.strip():
                record = json.loads(line)
                if "image" not in record:
                    raise ValueError(f"{jsonl}:{number}: no \"image\" key (found {sorted(record)}); each line is "
                                     '{"image": path, "caption": text}')
                yield str(base / record["image"]), record.get("caption")


def _jpeg_bytes(path: str, quality: int) -> tuple[bytes, int, int]:
    """The file's bytes if it is a JPEG (no re-encoding loss), else an RGB JPEG re-encode.
    Fully decodes the image first, so truncated or non-image files raise here."""
    with Image.open(path) as image:
        image.load()
        width, height = image.size
        if image.format == "JPEG":
            return Path(path).read_bytes(), width, height
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), width, height


def write_image_shards(source: str | os.PathLike, out_dir: str | os.PathLike, shard_size: int = 1000,
                       quality: int = 95, progress: bool = True) -> dict:
    """Shard a folder of image+``.txt`` pairs, or a ``.jsonl``, into img2dataset layout.

    Images without a caption and files PIL cannot decode are skipped and counted.
    Returns {"written", "skipped": {reason: n}, "shards", "urls"}.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"--from {source}: no such folder or .jsonl file")
    items: Iterable = iter_jsonl(source) if source.suffix == ".jsonl" else iter_folder(source)
    skipped: Counter = Counter()
    with ShardSink(out_dir, shard_size) as sink:
        for path, caption in tqdm(items, desc="shards", unit="img", disable=not progress):
            if not caption:
                skipped["missing_caption"] += 1
                continue
            try:
                data, width, height = _jpeg_bytes(path, quality)
            except Exception:  # PIL raises many types on bad files; any of them means skip
                skipped["bad_image"] += 1
                continue
            key = f"{sink.count:09d}"
            meta = {"key": key, "caption": caption, "source": path, "width": width, "height": height}
            sink.write(key, {"jpg": data, "txt": caption, "json": json.dumps(meta)})
    stats = {"written": sink.count, "skipped": dict(skipped), "shards": sink.shards, "urls": sink.url_pattern()}
    _write_stats(out_dir, stats)
    return stats


def _encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG", optimize=False)
    else:
        image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_shapes_shards(out_dir: str | os.PathLike, n: int, val_n: int = 0, size: int = 64, seed: int = 0,
                        shard_size: int = 1000, image_format: str = "png", bg_jitter: int = 0,
                        n_color_attr: int = 40, progress: bool = True) -> dict:
    """Render shapes scenes into ``{out}/train/*.tar`` and ``{out}/val/*.tar`` and write
    ``{out}/evaluation_metadata.jsonl`` (GenEval format, all six tags, incl. held-out).

    Samples are the same scenes `ShapesDataModule(seed=seed, image_size=size)` renders
    (streams "train" and "val"), none with a held-out prompt. PNG by default: lossless,
    so colour-matching evaluation works on the stored pixels; "jpg" is also accepted.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError("image_format must be png or jpg")
    out = Path(out_dir)
    stats: dict = {}
    for stream, count in (("train", n), ("val", val_n)):
        if count <= 0:
            continue
        with ShardSink(out / stream, shard_size) as sink:
            for index in tqdm(range(count), desc=f"shapes/{stream}", unit="img", disable=not progress):
                spec = scene_spec_for_index(seed, index, "train", stream)
                image, caption, meta = render_scene(spec, size, bg_jitter=bg_jitter)
                key = f"{index:09d}"
                meta["key"] = key
                sink.write(key, {image_format: _encode_image(image, image_format), "txt": caption,
                                 "json": json.dumps(meta)})
        stats[stream] = {"written": sink.count, "shards": sink.shards, "urls": sink.url_pattern()}
    suite = evaluation_suite(n_color_attr=n_color_attr, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation_metadata.jsonl", "w", encoding="utf-8") as fp:
        for spec in suite:
            fp.write(json.dumps(geneval_metadata(spec)) + "\n")
    stats["evaluation_prompts"] = len(suite)
    _write_stats(out, stats)
    return stats


def write_latent_shards(items: Iterable[tuple[str, np.ndarray, str]], out_dir: str | os.PathLike,
                        shard_size: int = 1000, progress: bool = False) -> dict:
    """Write cached-latent shards: ``{key}.latent.npy`` + ``{key}.txt`` per sample.

    Format: `np.save` of one sample's tokens, [N, D] floating (float16 keeps shards
    small; read back as float32) or [N] integer codes (read back as int64). Torch
    tensors are converted with `.numpy()`.
    """
    with ShardSink(out_dir, shard_size) as sink:
        for key, latent, caption in tqdm(items, desc="latents", unit="sample", disable=not progress):
            array = latent.detach().cpu().numpy() if hasattr(latent, "detach") else np.asarray(latent)
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            sink.write(key, {"latent.npy": buffer.getvalue(), "txt": caption})
    stats = {"written": sink.count, "shards": sink.shards, "urls": sink.url_pattern()}
    _write_stats(out_dir, stats)
    return stats


def _write_stats(out_dir: str | os.PathLike, stats: dict) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
