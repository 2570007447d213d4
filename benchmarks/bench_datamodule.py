"""Decoded samples/s: WebDataModule on 256² JPEG shards vs raw PIL decode of the same JPEGs.

    python benchmarks/bench_datamodule.py [--n 512] [--repeats 3] [--workers 0 2] [--no-write]

Both sides run in one process, on the same files, in the same run (the machine is
shared, so only medians and ratios from one run are meaningful). The raw baseline is
``Image.open(path).convert("RGB")`` per extracted file, i.e. decode only; the
DataModule does tar reading, decoding, resize/crop, [-1, 1] tensors and batching.
The result is written to the "bench_datamodule" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fluid_lightning.data.shards import ShardSink
from fluid_lightning.data.webdata import WebDataModule

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## bench_datamodule: WebDataModule vs raw PIL decode (256² JPEG)"


def photo_like_jpeg(rng: np.random.Generator, size: int = 256) -> bytes:
    """Smooth colour gradients plus mild noise: compresses and decodes like a photo,
    unlike pure noise (too slow) or flat colour (too fast)."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)),
                     np.cos(y * rng.uniform(1, 6) + rng.uniform(0, 6)),
                     np.sin((x + y) * rng.uniform(1, 6))], -1)
    pixels = (base * 80 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_data(root: Path, n: int, shard_size: int) -> tuple[str, list[Path]]:
    rng = np.random.default_rng(0)
    files = []
    (root / "jpg").mkdir(parents=True)
    with ShardSink(root / "shards", shard_size) as sink:
        for i in range(n):
            data = photo_like_jpeg(rng)
            sink.write(f"{i:09d}", {"jpg": data, "txt": f"synthetic image {i}"})
            path = root / "jpg" / f"{i:09d}.jpg"
            path.write_bytes(data)
            files.append(path)
    return sink.url_pattern(), files


def raw_pil(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB")
    return len(files) / (time.perf_counter() - start)


def datamodule(urls: str, workers: int, n: int) -> float:
    dm = WebDataModule(urls, image_size=256, batch_size=32, num_workers=workers, resampled=False,
                       shuffle_buffer=0, random_crop=True, pin_memory=False, persistent_workers=False)
    start = time.perf_counter()
    count = sum(len(batch["caption"]) for batch in dm.train_dataloader())  # includes worker start-up
    elapsed = time.perf_counter() - start
    assert count == n, (count, n)
    return count / elapsed


def write_results(text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (other sections are left alone)."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION in current:
        head, rest = current.split(SECTION, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        current = head.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    RESULTS.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls, files = make_data(Path(tmp), args.n, args.shard_size)
        raw_pil(files[:32])  # warm the page cache and PIL's plugins
        rows = {"raw PIL decode": []} | {f"WebDataModule, {w} workers": [] for w in args.workers}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            rows["raw PIL decode"].append(raw_pil(files))
            for w in args.workers:
                rows[f"WebDataModule, {w} workers"].append(datamodule(urls, w, args.n))
    raw = statistics.median(rows["raw PIL decode"])
    lines = [SECTION, "",
             f"Command: `{' '.join(['python benchmarks/bench_datamodule.py', *sys.argv[1:]])}`",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
             f"torch {torch.__version__} ({torch.get_num_threads()} threads); {args.n} photo-like 256² JPEGs (q90) in {args.shard_size}-sample shards; "
             f"median of {args.repeats} interleaved runs; DataModule output: batch 32 of [3,256,256] float in [-1,1].",
             "", "| variant | samples/s (median) | runs | ratio to raw PIL |", "|---|---|---|---|"]
    for name, values in rows.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name} | {statistics.median(values):.0f} | {runs} | {statistics.median(values) / raw:.2f} |")
    lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine). "
              "Raw PIL is decode only; the DataModule also parses tars, crops, converts to float32 in [-1, 1] "
              "and batches, and with workers each 32-image float batch (25 MB) crosses a process boundary, "
              "so on 2 busy cores workers do not pay off (ENVIRONMENT.md saw 450 -> 625 img/s "
              "for 0 -> 2 workers on a quieter run)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
