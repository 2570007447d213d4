"""Tiny command-line training runs in their own processes, for tests that kill, starve or resume them."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import lightning.pytorch.strategies.model_parallel as model_parallel
import torch
from tiny import CONF, ROOT

from fluid_lightning.checkpointing import safe_load

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


class Slow(L.Callback):
    """Makes a tiny run slow enough to be killed mid-training."""

    def on_train_batch_end(self, *args) -> None:
        time.sleep(0.3)


class MarkSteps(L.Callback):
    """Touches <default_root_dir>/step<n> after each optimizer step n."""

    def on_train_batch_end(self, trainer, *args) -> None:
        (Path(trainer.default_root_dir) / f"step{trainer.global_step}").touch()


class FileSizeLimit(L.Callback):
    """From step ``after_step`` on, no file this process writes may grow past ``max_bytes`` (the kernel's
    RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk, instead of raising SIGXFSZ)."""

    def __init__(self, after_step: int, max_bytes: int):
        self.after_step, self.max_bytes = after_step, max_bytes

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.after_step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_bytes, resource.RLIM_INFINITY))


class SlowShardedSave(L.Callback):
    """From the ``from_save``-th sharded save on, each rank writes its shards, touches
    ``<default_root_dir>/mid-save`` and waits: a window in which a test kills the job mid-save."""

    def __init__(self, from_save: int = 2):
        self.from_save = from_save

    def setup(self, trainer, pl_module, stage) -> None:
        real, root, saves = model_parallel._distributed_checkpoint_save, Path(trainer.default_root_dir), []

        def save_then_wait(state, path) -> None:
            real(state, path)
            saves.append(path)
            if len(saves) >= self.from_save:
                (root / "mid-save").touch()
                time.sleep(120)

        model_parallel._distributed_checkpoint_save = save_then_wait


def file_size_limit(after_step: int, max_bytes: int) -> str:
    """The command-line argument that adds ``FileSizeLimit`` to a fit."""
    return ('--trainer.callbacks+={"class_path": "cli_runs.FileSizeLimit", '
            f'"init_args": {{"after_step": {after_step}, "max_bytes": {max_bytes}}}}}')


def fit_command(root: Path, max_steps: int, *extra: str, stock_callbacks: bool = False) -> list[str]:
    """A tiny CLI fit: with ``stock_callbacks`` the default callbacks (checkpoints in root/checkpoints) plus
    Slow and MarkSteps; else a checkpoint every 2 steps in root/ckpt, all kept, and Slow."""
    trainer = root / "trainer.yaml"
    trainer.write_text(f"""trainer:
  deterministic: true
  callbacks:
    - class_path: cli_runs.Slow
checkpoint: {{dirpath: {root / 'ckpt'}, every_n_train_steps: 2, save_top_k: -1}}
""" if not stock_callbacks else "trainer:\n  deterministic: true\n")
    if stock_callbacks:
        extra = ("--trainer.callbacks+=cli_runs.Slow", "--trainer.callbacks+=cli_runs.MarkSteps", *extra)
    # Three batches per epoch, a checkpoint every 2 steps: the kill lands mid-epoch or at its end.
    return [sys.executable, "-m", "fluid_lightning", "fit", "--config", str(CONF / "trainer/cpu.yaml"),
            "--config", str(CONF / "data/shapes.yaml"), "--config", str(CONF / "model/tiny_fluid.yaml"),
            "--config", str(trainer), "--trainer.default_root_dir", str(root), f"--trainer.max_steps={max_steps}",
            "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4", "--data.init_args.num_train=12",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(path_glob: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not list(path_glob.parent.glob(path_glob.name)):
        assert proc.poll() is None, f"run ended before {path_glob.name} appeared"
        assert time.time() < deadline, f"no {path_glob} after {timeout} s"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, log: Path, ok: bool = True) -> str:
    proc.wait(timeout=240)
    text = log.read_text()
    if ok:
        assert proc.returncode == 0, text[-4000:]
    return text


def generator_weights(path: Path) -> dict[str, torch.Tensor]:
    state = safe_load(path)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("generator.", "ema."))}


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
