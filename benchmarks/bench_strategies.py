"""Step time and memory per process of one process vs DDP vs FSDP2 (2 processes, CPU, gloo).

    python benchmarks/bench_strategies.py [--steps 8] [--width 384] [--depth 8] [--batch 4]

    # on a GPU machine (no downloads: T5-XXL is replaced by a random one-layer T5 of its width):
    python benchmarks/bench_strategies.py --accelerator gpu --devices 1 --model conf/model/fluid.yaml conf/model/size/369m.yaml \
        --precision bf16-mixed --batch 64 --image-size 256 --stand-in-text --strategies single fsdp2

Each strategy trains the same mid-size Fluid (tiny_fluid.yaml widened and deepened, 64² images,
256 tokens; or ``--model``) through the real CLI, with the same per-process batch (so the 2-process
runs see twice the global batch). On CUDA it also reports the peak GPU memory per process and the
MFU: 6 × trainable parameters × tokens per image (the ``Throughput`` callback's estimate) × images/s
over the device's peak for the precision (Lightning's table). A callback in this file records, per rank: median step time (first 2 steps
dropped), the largest resident set size seen at step boundaries during training (memory that
sharding can save: parameters, gradients, optimiser state, EMA), the process peak (``ru_maxrss``,
which includes building the full model before it is sharded), and the bytes of parameters + grads +
AdamW state + EMA this rank holds, and (eager runs) the FLOPs of step 1 counted by
torch.utils.flop_counter beside the 6 × params × tokens estimate. ``--compile`` compiles the
transformer and head blocks; ``--profile`` prints rank 0's top ops and kernels over three steps (not
counted in the median).
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
import yaml
from torch.utils.flop_counter import FlopCounterMode

from fluid_lightning.callbacks.throughput import estimated_flops_per_image, peak_flops

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
    """Writes <BENCH_OUT>/rank<r>.json at the end of training (before Lightning moves a single-device
    model back to the CPU, so the GPU figures are still there)."""

    PROFILED = range(5, 8)  # steps under torch.profiler with --profile: after compile and warm-up
    COUNTED = 1  # the step whose FLOPs torch.utils.flop_counter counts (eager runs; not a timed step)

    def __init__(self):
        self.times, self.rss = [], []
        self.profile, self.profiler = os.environ.get("BENCH_PROFILE") == "1", None
        self.counter, self.counted_flops = None, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)  # time finished work, not queued work
        self.times.append(time.perf_counter() - self._start)
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.counted_flops, self.counter = self.counter.get_total_flops(), None
        if self.profiler is not None and batch_idx == self.PROFILED[-1]:
            self.profiler.__exit__(None, None, None)
            self._write_profile(trainer, module)
            self.profiler = None
        self.rss.append(_rss_mb())
        if batch_idx == 0:  # grads and optimiser state exist now
            opt = trainer.optimizers[0]
            states = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
            params = list(module.generator.parameters())
            grads = [p.grad for p in params if p.grad is not None]
            ema = list(module.ema.parameters()) if module.ema is not None else []
            self.state_mb = _local_bytes([*params, *grads, *states, *ema]) / 2**20

    def on_train_start(self, trainer, module):
        self.batch = trainer.datamodule.batch_size
        self.flops_per_image = estimated_flops_per_image(module, module.generator.num_tokens)  # DTensors: global sizes
        if module.device.type == "cuda":
            self.peak_flops = peak_flops(module.device, trainer.precision)
            torch.cuda.reset_peak_memory_stats(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        self.rss.append(_rss_mb())
        if self.profile and batch_idx == self.PROFILED[0]:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self._profile_start = time.perf_counter()
        if batch_idx == self.COUNTED and not module.hparams.get("compile"):
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()
        self._start = time.perf_counter()

    def _write_profile(self, trainer, module) -> None:
        """The ops and kernels that took the most time over the profiled steps. On CUDA an op's self
        time and its kernels' both appear (aten::mm and the GEMM kernels under it), so the column
        does not add up to the step; Optimizer.step spans Lightning's whole closure."""
        wall_ms = (time.perf_counter() - self._profile_start) * 1e3
        key = "self_device_time_total" if module.device.type == "cuda" else "self_cpu_time_total"
        lines = [f"rank {trainer.global_rank}, steps {self.PROFILED.start}-{self.PROFILED[-1]}, "
                 f"{wall_ms / len(self.PROFILED):.1f} ms per step under the profiler",
                 self.profiler.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)]
        (Path(os.environ["BENCH_OUT"]) / f"profile_rank{trainer.global_rank}.txt").write_text("\n".join(lines))

    def on_train_end(self, trainer, module):
        out = Path(os.environ["BENCH_OUT"]) / f"rank{trainer.global_rank}.json"
        step = statistics.median(t for i, t in enumerate(self.times) if i >= 2 and not (self.profile and i in self.PROFILED))
        result = {"median_step_s": step, "train_rss_mb": max(self.rss),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "state_mb": self.state_mb,
                  "estimated_flops_per_image": self.flops_per_image}
        if self.counted_flops is not None:  # the frozen text encoder's forward included
            result["counted_flops_per_image"] = self.counted_flops / self.batch
        if module.device.type == "cuda":
            result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(module.device) / 2**20
            for key, flops in (("mfu", self.flops_per_image), ("mfu_counted", result.get("counted_flops_per_image"))):
                if flops and self.peak_flops:
                    result[key] = flops * self.batch / step / self.peak_flops
        out.write_text(json.dumps(result))


STRATEGIES = {
    "single": ["--config", "conf/trainer/{device}.yaml", "--trainer.devices=1"],
    "ddp": ["--config", "conf/trainer/ddp.yaml", "--trainer.devices={devices}"],
    "fsdp2": ["--config", "conf/trainer/fsdp2.yaml", "--trainer.devices={devices}"],
}


def model_args(ns: argparse.Namespace, tmp: str) -> list[str]:
    g = "--model.init_args.generator.init_args"
    if ns.model is None:  # the mid-size CPU default: tiny_fluid widened and deepened
        args = ["--config", "conf/model/tiny_fluid.yaml", f"{g}.width={ns.width}", f"{g}.depth={ns.depth}",
                f"{g}.num_heads={ns.width // 64}", f"{g}.head_width={ns.width}"]
    else:
        args = [arg for path in ns.model for arg in ("--config", path)]
    if ns.stand_in_text:  # the configured T5's width (so the aligner is unchanged), one random layer
        generator = yaml.safe_load((ROOT / (ns.model or ["conf/model/tiny_fluid.yaml"])[0]).read_text())
        text_dim = generator["model"]["init_args"]["generator"]["init_args"]["text_dim"]
        width = text_dim if isinstance(text_dim, int) else 64  # tiny configs interpolate it from the T5 itself
        text = Path(tmp) / "stand_in_text.yaml"
        text.write_text("model:\n  init_args:\n    text_encoder:\n      init_args:\n        pretrained: null\n"
                        f"        config: {{d_model: {width}, d_kv: 64, d_ff: 256, num_layers: 1, num_heads: 8}}\n")
        args += ["--config", str(text)]
    return args


def run(name: str, ns: argparse.Namespace) -> list[dict]:
    device = "cpu" if ns.accelerator == "cpu" else "gpu"
    strategy = [a.format(device=device, devices=ns.devices) for a in STRATEGIES[name]]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fluid_lightning", "fit", *strategy,
               "--config", "conf/data/shapes.yaml", *model_args(ns, tmp),
               f"--trainer.accelerator={ns.accelerator}", f"--trainer.precision={ns.precision}",
               f"--trainer.max_steps={ns.steps}", "--trainer.limit_val_batches=0",
               "--trainer.enable_checkpointing=false", "--trainer.logger=false",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               "--trainer.callbacks=bench_strategies.StepStats", f"--data.init_args.image_size={ns.image_size}",
               f"--data.init_args.batch_size={ns.batch}", f"--data.init_args.num_workers={ns.workers}",
               "--trainer.default_root_dir", tmp, f"--model.init_args.compile={str(ns.compile).lower()}"]
        env = {**os.environ, "BENCH_OUT": tmp, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        if ns.accelerator == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        if ns.profile:
            env["BENCH_PROFILE"] = "1"
        if ns.accelerator != "cpu":
            env.setdefault("NCCL_DEBUG", "WARN")  # a failing collective then says why
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        for profile in sorted(Path(tmp).glob("profile_rank*.txt"))[:1]:
            print(f"{name}, profile:\n{profile.read_text()}", flush=True)
        return [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=384, help="default model only")
    parser.add_argument("--depth", type=int, default=8, help="default model only")
    parser.add_argument("--batch", type=int, default=4, help="per process")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--accelerator", default="cpu", help="cpu or gpu")
    parser.add_argument("--devices", type=int, default=2, help="processes of the ddp and fsdp2 runs")
    parser.add_argument("--model", nargs="+", help="conf/model/*.yaml files, composed in order (default: tiny_fluid "
                        "widened to --width x --depth)")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="data loader workers per process (default: 0 on CPU, 4 on GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block and head block "
                        "(model.init_args.compile); the first 2 steps, which compile, are not timed")
    parser.add_argument("--profile", action="store_true", help=f"print rank 0's top ops and kernels over steps "
                        f"{StepStats.PROFILED.start}-{StepStats.PROFILED[-1]} (torch.profiler; those steps run slower)")
    parser.add_argument("--stand-in-text", action="store_true",
                        help="replace the configured T5 by a random one-layer T5 of the same width (no download)")
    ns = parser.parse_args()
    if ns.workers is None:  # CPU: no worker competes with the 1-thread training processes; GPU: keep it fed
        ns.workers = 0 if ns.accelerator == "cpu" else 4
    threads = "1 thread per process" if ns.accelerator == "cpu" else torch.cuda.get_device_name(0)
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
          f"{threads}; model {ns.model or f'tiny_fluid {ns.width} x {ns.depth}'}, {ns.image_size}² images, "
          f"batch {ns.batch}/process, {ns.precision}{', compiled blocks and head' if ns.compile else ''}")
    results = {}
    for name in ns.strategies:  # one failure keeps the others' numbers; each is printed as it arrives
        try:
            results[name] = run(name, ns)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        except RuntimeError as err:
            print(err, flush=True)
    if not results:
        sys.exit("every strategy failed")
    base = results.get("single", next(iter(results.values())))[0]
    gpu = "gpu_peak_mb" in base
    print("| strategy | processes | median s/step (per rank) | step time ratio | train RSS MB/process | "
          "peak RSS MB/process | params+grads+Adam+EMA MB/process | state ratio |"
          + (" GPU peak MB/process | MFU |" if gpu else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if gpu else ""))
    for name, ranks in results.items():
        step = max(r["median_step_s"] for r in ranks)
        state = max(r["state_mb"] for r in ranks)
        per_rank = ", ".join(f"{r['median_step_s']:.2f}" for r in ranks)
        row = (f"| {name} | {len(ranks)} | {per_rank} | "
               f"{step / base['median_step_s']:.2f} | {max(r['train_rss_mb'] for r in ranks):.0f} | "
               f"{max(r['peak_rss_mb'] for r in ranks):.0f} | {state:.0f} | {state / base['state_mb']:.2f} |")
        if gpu:
            mfu = ranks[0]["mfu"]
            row += f" {max(r['gpu_peak_mb'] for r in ranks):.0f} | {f'{mfu:.1%}' if mfu else 'unknown peak'} |"
        print(row)
    for name, ranks in results.items():
        if "counted_flops_per_image" in ranks[0]:
            counted, estimate = ranks[0]["counted_flops_per_image"], ranks[0]["estimated_flops_per_image"]
            mfu = f", MFU by counted FLOPs {ranks[0]['mfu_counted']:.1%}" if "mfu_counted" in ranks[0] else ""
            print(f"{name}: training FLOPs per image counted on step {StepStats.COUNTED} {counted:.3g}, "
                  f"6 x trainable parameters x tokens {estimate:.3g} (counted / estimate {counted / estimate:.2f}){mfu}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
