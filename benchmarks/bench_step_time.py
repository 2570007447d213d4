"""Median training-step time of the tiny configs, all measured in one run so ratios are fair.

    python benchmarks/bench_step_time.py [--steps 30] [--precision 32-true bf16-mixed] [--configs tiny_fluid_kl]

Builds each conf/model/tiny_*.yaml through the real CLI (with conf/trainer/cpu.yaml and
conf/data/shapes.yaml), then times forward+backward+optimizer steps on one fixed batch. A config
with a learned tokenizer is timed twice: on images (the frozen VAE encodes every step) and on the
same batch's latents cached beforehand (what `tokenizer cache` + `kind: latents` gives).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fluid_lightning.cli import lightning_cli

ROOT = Path(__file__).resolve().parents[1]
# The shipped shapes VAE was trained at 64x64 (64 tokens after 2x2 grouping, as the pixel configs at 32x32).
DATA_OVERRIDES = {"tiny_fluid_kl": ["--data.init_args.image_size=64"]}


def build(config: Path, precision: str):
    cli = lightning_cli(
        ["--config", str(ROOT / "conf/trainer/cpu.yaml"), "--config", str(ROOT / "conf/data/shapes.yaml"),
         "--config", str(config), f"--trainer.precision={precision}", "--trainer.logger=false",
         *DATA_OVERRIDES.get(config.stem, [])],
        run=False,
    )
    return cli.model, cli.datamodule


def time_steps(model, batch, steps: int, precision: str) -> list[float]:
    optimizer = model.configure_optimizers()["optimizer"]
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss, _ = model._loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[3:]  # drop warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--configs", nargs="+", help="config stems to time (default: every conf/model/tiny_*.yaml)")
    ns = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'config':<24} {'precision':<11} {'params':>8} {'batch':>6} {'median s/step':>14} {'img/s':>7}")
    configs = sorted((ROOT / "conf/model").glob("tiny_*.yaml"))
    for config in [c for c in configs if not ns.configs or c.stem in ns.configs]:
        for precision in ns.precision:
            model, data = build(config, precision)
            model.train()
            data.setup("fit")
            batch = next(iter(data.train_dataloader()))
            batches = {config.stem: batch}
            if any(True for _ in model.tokenizer.parameters()):  # learned: also time on cached latents
                with torch.no_grad():
                    latents = model.tokenizer.encode(batch["image"])
                batches[f"{config.stem} (cached)"] = {"latent": latents, "caption": batch["caption"]}
            params = sum(p.numel() for p in model.generator.parameters()) / 1e6
            for name, inputs in batches.items():
                median = statistics.median(time_steps(model, inputs, ns.steps, precision))
                n = len(inputs["caption"])
                print(f"{name:<24} {precision:<11} {params:>7.2f}M {n:>6} {median:>14.3f} {n / median:>7.1f}")


if __name__ == "__main__":
    main()
