"""LineProgress: a log file (stdout to a file, as under SLURM or nohup) gets plain progress lines with
step, loss, speed and time left, flushed while training goes on, and no carriage-return bar."""

import os
import re
import subprocess
import sys
import time

from tiny import CONF, ROOT

BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]


def config_args(*paths) -> list[str]:
    return [arg for p in paths for arg in ("--config", str(p))]


def test_a_log_file_shows_progress_lines_while_training(tmp_path):
    """stdout to a file (SLURM, nohup): plain progress lines, flushed as they are written, not a tqdm bar."""
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fluid_lightning", "fit", *config_args(*BASE, CONF / "model/tiny_maskgit.yaml"),
             "--trainer.max_steps=400", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=2",
             "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks+=fluid_lightning.callbacks.LineProgress",
             "--trainer.callbacks.interval=0.5"],
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, stdout=out,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while not re.search(r"step \d+/400 .*train/loss .*steps/s.*eta", log.read_text()):
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        finally:
            proc.kill()
            proc.wait()
    assert "\r" not in log.read_text()
