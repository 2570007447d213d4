"""Decoded samples/s: WebDataModule on JPEG shards vs raw PIL decode of the same JPEGs, in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_datamodule.py [--n 512] [--rounds 9] [--no-write]

The machine is shared, so variants take turns and only ratios from one run mean anything:

- In-process variants (raw PIL, the WebDataModule with 0 workers, the ablations) take turns batch by
  batch: 32 raw decodes, one batch of each loader, 32 raw decodes, ... over one pass of the data per
  round, so a change in the machine's load hits all of them alike. Each round gives every variant a
  rate (samples / its own summed time) and a ratio to the raw rate of the same round.
- Worker variants cannot take turns (their processes run in the background): per round, a raw pass,
  then the worker pass, ratio to that raw pass. "fresh" workers (``persistent_workers=False``) include
  starting them (about 0.15-0.2 s for torch's DataLoader here, on a pass of well under a second);
  "persistent" times the second epoch alone, what every epoch after the first costs in training
  (``persistent_workers=True`` is the WebDataModule's default).

The baseline, "raw PIL decode", is ``Image.open(path).convert("RGB")`` per extracted .jpg file: a
full-size decode to RGB, nothing else (no tar, resize, crop or batching). The WebDataModule does what a
training step gets: tar reading, decoding, resize/crop to ``image_size`` (random crops), batches of 32
(uint8 [32, 3, S, S] by default). Loaders are built before the clock starts (once per run in training).
The loader decodes JPEGs with libjpeg-turbo through simplejpeg (the same pixels as PIL), so a second
baseline, "raw libjpeg-turbo decode", is ``simplejpeg.decode_jpeg`` per file: the loader's overhead.
Ablations, 0 workers: JPEGs decoded by PIL (as before simplejpeg), ``image_dtype="float32"`` (float
batches built on the CPU) and webdataset's ``tarfile`` reader instead of `tarstream`. A second set stores
the JPEGs at 512² for ``image_size=256``, where the loader decodes at 1/2 scale in the DCT (PIL's draft
mode); its raw baseline is given with a full decode and with the same draft decode, so the table shows
where the gain comes from. Also timed:
``images_to_float`` on the CPU (the conversion a model now does on its device) and the fresh shared
memory every batch from a worker travels in.

The result replaces the "bench_datamodule" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image

import fluid_lightning.data.samples as samples
import fluid_lightning.data.webdata as webdata
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shards import ShardSink
from fluid_lightning.data.webdata import WebDataModule

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## bench_datamodule: WebDataModule vs raw PIL decode (256² JPEG)"
BATCH = 32


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


def make_data(root: Path, n: int, shard_size: int, size: int = 256) -> tuple[str, list[Path]]:
    rng = np.random.default_rng(0)
    files = []
    (root / "jpg").mkdir(parents=True)
    with ShardSink(root / "shards", shard_size) as sink:
        for i in range(n):
            data = photo_like_jpeg(rng, size)
            sink.write(f"{i:09d}", {"jpg": data, "txt": f"synthetic image {i}"})
            path = root / "jpg" / f"{i:09d}.jpg"
            path.write_bytes(data)
            files.append(path)
    return sink.url_pattern(), files


def raw_pil(files: list[Path], draft: int | None = None) -> float:
    """Samples/s of one pass of raw decodes."""
    start = time.perf_counter()
    count = sum(raw_steps(files, draft))
    return count / (time.perf_counter() - start)


def raw_steps(files: list[Path], draft: int | None = None, decoder: str = "pil") -> Iterator[int]:
    """Decode `files`, BATCH at a time, yielding how many were decoded (decoder: pil | simplejpeg)."""
    for first in range(0, len(files), BATCH):
        for path in files[first : first + BATCH]:
            if decoder == "simplejpeg":
                simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")
                continue
            with Image.open(path) as image:
                if draft:
                    image.draft("RGB", (draft, draft))
                image.convert("RGB")
        yield len(files[first : first + BATCH])


@contextlib.contextmanager
def tarfile_reader(active: bool = True):
    """webdataset's tarfile-based reader in place of tarstream (in-process loaders only)."""
    ours = webdata.tarfile_samples
    if active:
        webdata.tarfile_samples = wds.tariterators.tarfile_samples
    try:
        yield
    finally:
        webdata.tarfile_samples = ours


@contextlib.contextmanager
def pil_decoder(active: bool = True):
    """JPEGs decoded by PIL, as before simplejpeg (in-process loaders only)."""
    ours = samples._decode_jpeg
    if active:
        samples._decode_jpeg = lambda data, size: None
    try:
        yield
    finally:
        samples._decode_jpeg = ours


def datamodule(urls: str, workers: int = 0, image_dtype: str = "uint8", persistent: bool = False) -> WebDataModule:
    return WebDataModule(urls, image_size=256, batch_size=BATCH, num_workers=workers, resampled=False,
                         shuffle_buffer=0, random_crop=True, pin_memory=False, persistent_workers=persistent,
                         image_dtype=image_dtype)


def loader_steps(urls: str, image_dtype: str = "uint8", reader: str = "tarstream", decoder: str = "simplejpeg"
                 ) -> Iterator[int]:
    """One in-process pass, a batch per step (the loader is built now, before the first step)."""
    data = datamodule(urls, image_dtype=image_dtype).train_dataloader()

    def steps() -> Iterator[int]:
        batches = iter(data)
        while True:
            with tarfile_reader(reader == "tarfile"), pil_decoder(decoder == "pil"):  # only while this variant runs
                batch = next(batches, None)
            if batch is None:
                return
            yield len(batch["caption"])

    return steps()


def take_turns(variants: dict[str, Callable[[], Iterator[int]]]) -> dict[str, tuple[float, float]]:
    """(samples/s, samples per CPU-second) of each variant over one pass, the variants advancing one
    step each in turn. CPU time is this process's: the work done, whatever else the machine runs."""
    running = {name: make() for name, make in variants.items()}
    elapsed, cpu, counts = dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0.0), dict.fromkeys(variants, 0)
    while running:
        for name, steps in list(running.items()):
            start, cpu_start = time.perf_counter(), time.process_time()
            count = next(steps, None)
            elapsed[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - cpu_start
            if count is None:
                del running[name]
            else:
                counts[name] += count
    return {name: (counts[name] / elapsed[name], counts[name] / cpu[name]) for name in variants}


def worker_pass(urls: str, n: int, persistent: bool) -> float:
    """Samples/s of one pass with 2 workers (persistent: the second epoch, timed alone)."""
    data = datamodule(urls, workers=2, persistent=persistent).train_dataloader()
    if persistent:
        assert sum(len(batch["caption"]) for batch in data) == n  # the first epoch starts the workers
    start = time.perf_counter()
    count = sum(len(batch["caption"]) for batch in data)
    elapsed = time.perf_counter() - start
    del data  # stops persistent workers
    assert count == n, (count, n)
    return count / elapsed


def float_conversion_ms(size: int = 256) -> float:
    """ms per batch of 32: uint8 channels-last [32, 3, S, S] -> float [-1, 1] on the CPU."""
    pixels = torch.randint(0, 256, (BATCH, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        images_to_float(pixels)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def shared_memory_ms(size: int = 256) -> tuple[float, float]:
    """ms to write one uint8 batch (32×S²×3) into fresh shared memory, as every batch a worker sends
    needs, and into memory written before."""
    source = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    reused = np.empty_like(source)
    fresh, again = [], []
    for _ in range(20):
        start = time.perf_counter()
        shared = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(source.nbytes))
        np.copyto(shared.view(source.shape).numpy(), source)
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        np.copyto(reused, source)
        again.append(time.perf_counter() - start)
    return 1000 * statistics.median(fresh), 1000 * statistics.median(again)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(simd) or 'no AVX2'})"


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


def table(rows: dict[str, list[float]], baseline: str, cpu_rows: dict[str, list[float]] | None = None) -> list[str]:
    """Every round's rate and its ratio to the baseline's rate in the same round; medians of both (and,
    for variants that took turns in this process, the median ratio of samples per CPU-second)."""
    extra = " ratio of samples per CPU-second, median |" if cpu_rows else ""
    lines = [f"| variant | samples/s, median | samples/s, every round | ratio to {baseline}, every round "
             f"| ratio, median of rounds |{extra}", "|---|---|---|---|---|" + ("---|" if cpu_rows else "")]
    for name, values in rows.items():
        ratios = [v / b for v, b in zip(values, rows[baseline])]
        line = (f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} "
                f"| {', '.join(f'{r:.2f}' for r in ratios)} | **{statistics.median(ratios):.2f}** |")
        if cpu_rows:
            line += f" {statistics.median(v / b for v, b in zip(cpu_rows[name], cpu_rows[baseline])):.2f} |"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    raw, draft = "raw PIL decode", "raw PIL decode, draft mode (1/2 scale)"
    zero = "WebDataModule, 0 workers"
    fresh, persistent = "WebDataModule, 2 workers, fresh (start-up included)", "WebDataModule, 2 workers, persistent (2nd epoch)"
    float32, tarfile = "0 workers, image_dtype=float32 (ablation)", "0 workers, webdataset's tarfile reader (ablation)"
    raw_sj, pil = "raw libjpeg-turbo decode (simplejpeg)", "0 workers, JPEGs decoded by PIL (ablation)"
    turns = {name: [] for name in (raw, raw_sj, zero, pil, float32, tarfile)}
    turns_512 = {name: [] for name in (raw, draft, zero)}
    cpu, cpu_512 = {name: [] for name in turns}, {name: [] for name in turns_512}
    workers, workers_512 = {name: [] for name in (raw, fresh, persistent)}, {name: [] for name in (raw, persistent)}
    with tempfile.TemporaryDirectory() as tmp:
        urls, files = make_data(Path(tmp) / "256", args.n, args.shard_size)
        urls_512, files_512 = make_data(Path(tmp) / "512", args.n, args.shard_size, size=512)
        raw_pil(files[:BATCH]), raw_pil(files_512[:BATCH])  # warm the page cache and PIL's plugins
        for _ in range(args.rounds):
            rates = take_turns({raw: lambda: raw_steps(files), raw_sj: lambda: raw_steps(files, decoder="simplejpeg"),
                                zero: lambda: loader_steps(urls), pil: lambda: loader_steps(urls, decoder="pil"),
                                float32: lambda: loader_steps(urls, image_dtype="float32"),
                                tarfile: lambda: loader_steps(urls, reader="tarfile")})
            for name, (rate, cpu_rate) in rates.items():
                turns[name].append(rate)
                cpu[name].append(cpu_rate)
            rates = take_turns({raw: lambda: raw_steps(files_512), draft: lambda: raw_steps(files_512, draft=256),
                                zero: lambda: loader_steps(urls_512)})
            for name, (rate, cpu_rate) in rates.items():
                turns_512[name].append(rate)
                cpu_512[name].append(cpu_rate)
            workers[raw].append(raw_pil(files))
            workers[fresh].append(worker_pass(urls, args.n, persistent=False))
            workers[persistent].append(worker_pass(urls, args.n, persistent=True))
            workers_512[raw].append(raw_pil(files_512))
            workers_512[persistent].append(worker_pass(urls_512, args.n, persistent=True))
        conversion, (fresh_ms, reused_ms) = float_conversion_ms(), shared_memory_ms()
    lines = [SECTION, "",
             f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} "
             f"{' '.join(['python benchmarks/bench_datamodule.py', *sys.argv[1:]])}`",
             f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, shared; {platform.platform()}, "
             f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"Pillow {Image.__version__}, simplejpeg {simplejpeg.__version__}. {args.n} photo-like JPEGs (q90) in {args.shard_size}-sample shards; "
             f"{args.rounds} rounds; DataModule output: batches of {BATCH} uint8 [3,256,256] (random crops) "
             "unless said otherwise.",
             "", "256² JPEGs, `image_size=256` (the target: the WebDataModule at >= 0.8x raw PIL decode). "
             "In one process, taking turns batch by batch:", "",
             *table(turns, raw, cpu),
             "", "With 2 worker processes (a raw pass, then the worker pass, each round):", "",
             *table(workers, raw),
             "", "512² JPEGs, `image_size=256`: the loader decodes in draft mode (1/2 scale), then crops. "
             "Taking turns batch by batch:", "",
             *table(turns_512, raw, cpu_512),
             "", "With 2 worker processes:", "",
             *table(workers_512, raw),
             "", f"`images_to_float` on the CPU (1 thread): {conversion:.1f} ms per uint8 batch of {BATCH}×3×256² "
             f"({1000 * conversion / BATCH:.0f} µs/sample), paid by the model's step; on a GPU it runs there.",
             f"Writing one such batch (6 MB) into fresh shared memory, as every batch from a worker needs: "
             f"{fresh_ms:.1f} ms ({1000 * fresh_ms / BATCH:.0f} µs/sample); into memory written before: {reused_ms:.1f} ms.",
             f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_results(text)


if __name__ == "__main__":
    main()
