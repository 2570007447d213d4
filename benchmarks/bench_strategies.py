"""Step time and memory per process of one process vs DDP vs FSDP2 (2 processes, CPU, gloo).

    python benchmarks/bench_strategies.py [--steps 8] [--width 384] [--depth 8] [--batch 4]

Each strategy trains the same mid-size Fluid (tiny_fluid.yaml widened and deepened, 64² images,
256 tokens) through the real CLI, with the same per-process batch (so the 2-process runs see twice
the global batch). A callback in this file records, per rank: median step time (first 2 steps
dropped), the largest resident set size seen at step boundaries during training (memory that
sharding can save: parameters, gradients, optimiser state, EMA), the process peak (``ru_maxrss``,
which includes building the full model before it is sharded), and the bytes of parameters + grads +
AdamW state + EMA this rank holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


class StepStats(L.Callback):
    """Writes <BENCH_OUT>/rank<r>.json at the end of fit."""

    def __init__(self):
        self.times, self.rss = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.rss.append(_rss_mb())
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._start)
        self.rss.append(_rss_mb())
        if batch_idx == 0:  # grads and optimiser state exist now
            opt = trainer.optimizers[0]
            states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
            params = list(module.generator.parameters())
            grads = [p.grad for p in params if p.grad is not None]
            ema = list(module.ema.parameters()) if module.ema is not None else []
            self.state_mb = _local_bytes([*params, *grads, *states, *ema]) / 2**20

    def on_fit_end(self, trainer, module):
        out = Path(os.environ["BENCH_OUT"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({
            "median_step_s": statistics.median(self.times[2:]), "train_rss_mb": max(self.rss),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "state_mb": self.state_mb,
        }))


STRATEGIES = {
    "single": ["--config", "conf/trainer/cpu.yaml", "--trainer.devices=1"],
    "ddp": ["--config", "conf/trainer/ddp.yaml", "--trainer.devices=2"],
    "fsdp2": ["--config", "conf/trainer/fsdp2.yaml", "--trainer.devices=2"],
}


def run(name: str, ns: argparse.Namespace) -> list[dict]:
    g = "--model.init_args.generator.init_args"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fluid_lightning", "fit", *STRATEGIES[name],
               "--config", "conf/data/shapes.yaml", "--config", "conf/model/tiny_fluid.yaml",
               "--trainer.accelerator=cpu", "--trainer.precision=32-true", f"--trainer.max_steps={ns.steps}",
               "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               "--trainer.callbacks=bench_strategies.StepStats", "--data.init_args.image_size=64",
               f"--data.init_args.batch_size={ns.batch}", f"{g}.width={ns.width}", f"{g}.depth={ns.depth}",
               f"{g}.num_heads={ns.width // 64}", f"{g}.head_width={ns.width}", "--trainer.default_root_dir", tmp]
        env = {**os.environ, "BENCH_OUT": tmp, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        return [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ns = parser.parse_args()
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
          f"1 thread per process; width {ns.width} x depth {ns.depth}, 256 tokens, batch {ns.batch}/process, fp32")
    results = {name: run(name, ns) for name in ns.strategies}
    base = results.get("single", next(iter(results.values())))[0]
    print("| strategy | processes | median s/step (per rank) | step time ratio | train RSS MB/process | "
          "peak RSS MB/process | params+grads+Adam+EMA MB/process | state ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ranks in results.items():
        step = max(r["median_step_s"] for r in ranks)
        state = max(r["state_mb"] for r in ranks)
        per_rank = ", ".join(f"{r['median_step_s']:.2f}" for r in ranks)
        print(f"| {name} | {len(ranks)} | {per_rank} | "
              f"{step / base['median_step_s']:.2f} | {max(r['train_rss_mb'] for r in ranks):.0f} | "
              f"{max(r['peak_rss_mb'] for r in ranks):.0f} | {state:.0f} | {state / base['state_mb']:.2f} |")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
