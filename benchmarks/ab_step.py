"""Did a change make the step faster? This working tree against a git revision, taking turns.

    OMP_NUM_THREADS=1 python benchmarks/ab_step.py --base HEAD~1 --depth 6 --dropout 0.1 --rounds 24
    OMP_NUM_THREADS=1 python benchmarks/ab_step.py --base a66b45d --work sample

Each side runs in its own persistent one-thread process (the revision from a temporary `git worktree`),
building bench_vs_mar.py's model of its own tree with the same seed; the two are sent one unit of work at a
time in alternating order, with the same draws in each turn. A unit is a training step (forward, backward,
AdamW) or, with ``--work sample``, sampling 8 images (cfg 3, DPM-Solver++ 12 steps x 8 AR steps). Prints the
medians, the median and quartiles of new / base within each turn, and the ratio of the fastest turns: on a
shared machine the per-turn ratio moves far less than either time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_vs_mar import per_turn_quartiles

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import sys, time, torch
tree, depth, dropout, work = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sys.path[:0] = [tree, tree + "/benchmarks"]
import bench_vs_mar as bench
torch.set_num_threads(1)
torch.manual_seed(0)
runner = bench.Runner("ours", bench.build_ours(depth, dropout), torch.device("cpu"))
for line in sys.stdin:
    bench.seed_everything(int(line))
    start = time.perf_counter()
    runner.sample(3.0, bench.BATCH, ("dpm++", 12, 8)) if work == "sample" else runner.train_step()
    print(time.perf_counter() - start, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=24, help="timed turns, after 2 untimed ones")
    parser.add_argument("--work", choices=["train", "sample"], default="train")
    ns = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), ns.base],
                               capture_output=True, text=True)
        if added.returncode:
            sys.exit(f"ab_step: cannot check out --base {ns.base!r}: {added.stderr.strip()}")
        try:
            trees = {"base": base_tree, "new": ROOT}
            workers = {name: subprocess.Popen([sys.executable, "-c", WORKER, str(tree), str(ns.depth), str(ns.dropout),
                                               ns.work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                       for name, tree in trees.items()}
            times: dict[str, list[float]] = {name: [] for name in trees}
            for turn in range(ns.rounds + 2):
                for name in trees if turn % 2 == 0 else reversed(trees):
                    workers[name].stdin.write(f"{turn}\n")
                    workers[name].stdin.flush()
                    seconds = workers[name].stdout.readline()
                    if not seconds:
                        sys.exit(f"ab_step: the {name} worker stopped (its error is above)")
                    if turn >= 2:
                        times[name].append(float(seconds))
            for worker in workers.values():
                worker.stdin.close()
                worker.wait()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    q1, median, q3 = per_turn_quartiles(times["new"], times["base"])
    print(f"{ns.work}, {ns.depth} blocks, dropout {ns.dropout}, {ns.rounds} turns: base {statistics.median(times['base']):.3f} s, "
          f"new {statistics.median(times['new']):.3f} s; new / base per turn: median {median:.3f} (quartiles "
          f"{q1:.2f}-{q3:.2f}); fastest turns {min(times['new']) / min(times['base']):.3f}")


if __name__ == "__main__":
    main()
