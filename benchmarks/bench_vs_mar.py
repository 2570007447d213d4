"""This project's generator beside the official MAR code (github.com/LTH14/mar), at equal work.

    git clone https://github.com/LTH14/mar /path/to/mar         # never vendored or committed here
    pip install timm==0.9.12 --no-deps scipy                     # what MAR imports (timm without torchvision)
    OMP_NUM_THREADS=1 python benchmarks/bench_vs_mar.py --mar /path/to/mar

Both models are built at the same width and token layout (256 tokens x 16 dims, batch 8, width 256,
head 3 x 256, diffusion_batch_mul 4) and timed taking turns step by step in one process: training
steps (forward, backward, AdamW step) and sampling (16 AR steps, 25 diffusion steps, per image).
Rows: the same number of blocks (MAR: 4 encoder + 4 decoder; here 8 blocks with text cross-attention),
and a FLOPs-matched depth here; dropout 0 and 0.1 (MAR's attention and projection dropout, ours in
attention and MLP); the project in bf16 autocast against MAR in fp32. FLOPs are counted with
torch.utils.flop_counter on one training step of each. MAR runs unchanged: on the CPU a harness turns
its `.cuda()` calls into no-ops, and where torchvision is missing it stubs the modules timm imports
(`--device cuda` runs both on the GPU). Without --mar (or without timm) the script says what to
install and exits without running.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from fluid_lightning.models.generator import FluidGenerator

TOKENS, TOKEN_DIM, BATCH, WIDTH, HEADS, TEXT_LEN, TEXT_DIM = 256, 16, 8, 256, 4, 32, 64


# ---- the harness: MAR unchanged, on the CPU ---------------------------------------------------------
class _Anything(types.ModuleType):
    """A stand-in module (or attribute) that returns stand-ins for whatever is asked of it: timm imports
    torchvision names at import time but the transformer blocks never use them."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Anything(self.__name__)

    def __mro_entries__(self, bases):
        return (object,)


def import_mar(path: Path):
    """MAR's `models.mar` module, imported from a local clone without touching its files (torchvision,
    which timm imports, is stubbed only where it is not installed)."""
    stubs = () if importlib.util.find_spec("torchvision") is not None else (
        "torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
        "torchvision.ops.misc", "torchvision.datasets", "torchvision.utils")
    for name in stubs:
        sys.modules.setdefault(name, _Anything(name))
    sys.path.insert(0, str(path))
    import models.mar as mar  # noqa: PLC0415 - from the clone given on the command line

    return mar


@contextlib.contextmanager
def cuda_calls_stay_on(device: torch.device):
    """MAR moves new tensors with `.cuda()`; on a CPU run that is a no-op."""
    if device.type == "cuda":
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def build_mar(mar, depth: int, dropout: float):
    return mar.MAR(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=TOKEN_DIM, encoder_embed_dim=WIDTH,
                   encoder_depth=depth, encoder_num_heads=HEADS, decoder_embed_dim=WIDTH, decoder_depth=depth,
                   decoder_num_heads=HEADS, attn_dropout=dropout, proj_dropout=dropout, diffloss_d=3,
                   diffloss_w=WIDTH, num_sampling_steps="25", diffusion_batch_mul=4, class_num=1000)


def build_ours(depth: int, dropout: float) -> FluidGenerator:
    return FluidGenerator(token_kind="continuous", order="random", grid_size=16, token_dim=TOKEN_DIM, width=WIDTH,
                          depth=depth, num_heads=HEADS, dropout=dropout, text_dim=TEXT_DIM, aligner_depth=1,
                          head_width=WIDTH, head_depth=3, diffusion_batch_mul=4, diffusion_steps=25)


# ---- one step of each ---------------------------------------------------------------------------------
class Runner:
    """A model, its optimizer and fixed inputs; `train_step()` and `sample()` run one timed unit."""

    def __init__(self, name: str, model, device: torch.device, bf16: bool = False):
        self.name, self.model, self.device, self.bf16 = name, model.to(device), device, bf16
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randn(BATCH, TOKENS, TOKEN_DIM, generator=g).to(device)
        self.text = torch.randn(BATCH, TEXT_LEN, TEXT_DIM, generator=g).to(device)
        self.text_mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.bool, device=device)
        self.labels = torch.randint(0, 1000, (BATCH,), generator=g).to(device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def loss(self):
        with self._autocast(), cuda_calls_stay_on(self.device):
            if self.name == "MAR":  # MAR reads [B, C, H, W] latents and class labels
                return self.model(self.tokens.transpose(1, 2).reshape(BATCH, TOKEN_DIM, 16, 16), self.labels)
            return self.model(self.tokens, self.text, self.text_mask)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()

    @torch.no_grad()
    def sample(self, cfg: float, images: int, sampler: tuple[str, int, int] = ("ddpm", 25, 16)) -> None:
        """MAR: 16 AR steps of 25-step DDPM; ours: (diffusion sampler, its steps, AR steps)."""
        self.model.eval()
        with self._autocast(), cuda_calls_stay_on(self.device):
            if self.name == "MAR":
                self.model.sample_tokens(images, num_iter=16, cfg=cfg, labels=self.labels[:images])
            else:
                name, diffusion_steps, ar_steps = sampler
                self.model.sample(self.text[:images], self.text_mask[:images], steps=ar_steps, cfg=cfg,
                                  diffusion_sampler=name, diffusion_steps=diffusion_steps)

    def train_flops(self, draws: int = 8) -> float:
        """Mean FLOPs of a training step over ``draws`` seeded draws: both models' work depends on the
        mask ratio they draw (MAR's encoder sees only the kept tokens, our head only the masked ones)."""
        total = 0
        for seed in range(draws):
            seed_everything(seed)
            counter = FlopCounterMode(display=False)
            with counter:
                self.loss().backward()
            total += counter.get_total_flops()
        self.optimizer.zero_grad(set_to_none=True)
        return total / draws


def seed_everything(seed: int) -> None:
    """torch and NumPy: MAR draws its mask ratio and orders from NumPy."""
    torch.manual_seed(seed)
    np.random.seed(seed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def take_turns(runners: list[Runner], work, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of `work(runner)` per round for each runner, alternating who goes first."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(warmup + rounds):
        for runner in runners if i % 2 == 0 else runners[::-1]:
            seed_everything(i)  # the same mask ratios and orders for every row
            sync(runner.device)
            start = time.perf_counter()
            work(runner)
            sync(runner.device)
            if i >= warmup:
                times[runner.name].append(time.perf_counter() - start)
    return times


def per_turn_quartiles(numerators: list[float], denominators: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of the ratio within each turn (the two ran back to back on
    the same draws), which the box's load moves far less than it moves either time alone."""
    ratios = [n / d for n, d in zip(numerators, denominators)]
    return tuple(statistics.quantiles(ratios, n=4, method="inclusive")) if len(ratios) > 1 else (ratios[0],) * 3


def turn_quartiles(times: dict[str, list[float]]) -> str:
    """The table's "per turn, quartiles" cell for ours / MAR."""
    q1, _, q3 = per_turn_quartiles(times["ours"], times["MAR"])
    return f"{q1:.2f}" if q1 == q3 else f"{q1:.2f}-{q3:.2f}"


def peak_size(device: torch.device) -> int:
    """The square matmul size whose FLOP/s stand for the peak: 1024 keeps a CPU reading short; a GPU
    needs 8192 to run well past its launch overhead."""
    return 8192 if device.type == "cuda" else 1024


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a square matmul in ``dtype``: the peak the training FLOP/s are compared with."""
    n = peak_size(device)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def ours_depth_matching(mar_flops: float, dropout: float, device: torch.device) -> int:
    """The depth whose training FLOPs come closest to MAR's (FLOPs grow linearly with depth)."""
    low, high = (Runner("ours", build_ours(depth, dropout), device).train_flops() for depth in (2, 3))
    return max(1, round(2 + (mar_flops - low) / (high - low)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mar", type=Path, help="a local clone of github.com/LTH14/mar")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per model and row")
    parser.add_argument("--sample-rounds", type=int, default=3)
    parser.add_argument("--mar-depth", type=int, default=4, help="MAR encoder blocks = decoder blocks")
    parser.add_argument("--samplers", nargs="*", default=["dpm++:12:16", "dpm++:12:8"],
                        help="our fewer-step settings beside MAR's sampler, as sampler:diffusion steps:AR steps "
                             "(their image quality: benchmarks/bench_samplers.py)")
    parser.add_argument("--skip-train", action="store_true", help="sampling rows only")
    parser.add_argument("--skip-sample", action="store_true", help="training rows only")
    ns = parser.parse_args()
    if ns.mar is None or not (ns.mar / "models" / "mar.py").is_file():
        sys.exit("bench_vs_mar: give --mar /path/to/a/clone/of/github.com/LTH14/mar (git clone "
                 "https://github.com/LTH14/mar); nothing was run")
    missing = [m for m in ("timm", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench_vs_mar: MAR needs {', '.join(missing)}: pip install timm==0.9.12 --no-deps scipy; "
                 "nothing was run")
    mar = import_mar(ns.mar.resolve())
    device = torch.device(ns.device)
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), device {device}")
    print(f"# {TOKENS} tokens x {TOKEN_DIM}, batch {BATCH}, width {WIDTH}, {HEADS} heads, head 3 x {WIDTH}, mul 4; "
          f"text {TEXT_LEN} x {TEXT_DIM} (ours), 16 AR steps, 25 diffusion steps; medians of {ns.rounds} turns")
    peaks = {dtype: matmul_peak(dtype, device) for dtype in (torch.float32, torch.bfloat16)}
    bf16 = peaks[torch.bfloat16] > peaks[torch.float32]  # the CPU default precision, by measurement
    print(f"# {peak_size(device)}² matmul peak: fp32 {peaks[torch.float32] / 1e9:.1f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.1f} "
          f"GFLOP/s: ours runs {'bf16 autocast' if bf16 else 'fp32 (bf16 is slower here)'} in its default rows; "
          "the FLOP/s columns divide by the peaks measured again just before the row")
    print("| row | MAR s | ours s | ours / MAR | per turn, quartiles | FLOPs ours / MAR | MAR FLOP/s / fp32 peak | "
          "ours FLOP/s / its peak |")
    print("|---|---|---|---|---|---|---|---|")
    matched_depth = ours_depth_matching(Runner("MAR", build_mar(mar, ns.mar_depth, 0.0), device).train_flops(), 0.0, device)
    for dropout in () if ns.skip_train else (0.0, 0.1):
        torch.manual_seed(0)
        mar_runner = Runner("MAR", build_mar(mar, ns.mar_depth, dropout), device)
        mar_flops = mar_runner.train_flops()
        matched_depth = ours_depth_matching(mar_flops, dropout, device)
        rows = [(f"train, {2 * ns.mar_depth} blocks, dropout {dropout}", 2 * ns.mar_depth, False),
                (f"train, FLOPs-matched {matched_depth} blocks, dropout {dropout}", matched_depth, False)]
        if bf16:
            rows.append((f"train, FLOPs-matched {matched_depth} blocks, dropout {dropout}, ours bf16", matched_depth, True))
        for label, depth, autocast in rows:
            ours = Runner("ours", build_ours(depth, dropout), device, bf16=autocast)
            flops = ours.train_flops()
            peak = matmul_peak(torch.bfloat16 if autocast else torch.float32, device)
            fp32_peak = peak if not autocast else matmul_peak(torch.float32, device)
            times = take_turns([mar_runner, ours], Runner.train_step, ns.rounds, warmup=2)
            m, o = statistics.median(times["MAR"]), statistics.median(times["ours"])
            print(f"| {label} | {m:.3f} | {o:.3f} | {o / m:.2f} | {turn_quartiles(times)} | {flops / mar_flops:.2f} | "
                  f"{mar_flops / m / fp32_peak:.0%} | {flops / o / peak:.0%} |",
                  flush=True)
    samplers = [("ddpm", 25, 16)] + [tuple(int(x) if x.isdigit() else x for x in s.split(":")) for s in ns.samplers]
    for cfg in () if ns.skip_sample else (1.0, 3.0):
        for depth, autocast in ((2 * ns.mar_depth, False), (matched_depth, False), (matched_depth, True))[: 3 if bf16 else 2]:
            for sampler in samplers if depth == matched_depth else samplers[:1]:
                mar_runner = Runner("MAR", build_mar(mar, ns.mar_depth, 0.0), device)
                ours = Runner("ours", build_ours(depth, 0.0), device, bf16=autocast)
                times = take_turns([mar_runner, ours], lambda r, c=cfg, s=sampler: r.sample(c, BATCH, s),
                                   ns.sample_rounds, warmup=1)
                m, o = (statistics.median(times[k]) / BATCH for k in ("MAR", "ours"))
                label = (f"sample per image, cfg {cfg}, {depth} blocks, ours {sampler[0]} {sampler[1]} steps x "
                         f"{sampler[2]} AR steps{', bf16' if autocast else ''}")
                print(f"| {label} | {m:.3f} | {o:.3f} | {o / m:.2f} | {turn_quartiles(times)} | | | |", flush=True)


if __name__ == "__main__":
    main()
