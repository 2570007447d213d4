"""Evaluation callbacks under 2-process DDP on CPU (gloo): one grid and one metric value, not two."""

import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import ROOT


def test_ddp_run_writes_one_grid_and_one_metric_value_per_evaluation(tmp_path):
    args = [
        sys.executable, "-m", "fluid_lightning", "fit",
        "--config", "conf/trainer/cpu.yaml", "--config", "conf/data/shapes.yaml",
        "--config", "conf/model/tiny_maskgit.yaml",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=2",
        "--trainer.default_root_dir", str(tmp_path),
        "--model.init_args.sampling.steps=2",
        "--trainer.callbacks+=fluid_lightning.callbacks.ImageGrid",
        "--trainer.callbacks.prompts=[a photo of a red circle, a photo of two squares]",
        "--trainer.callbacks+=fluid_lightning.callbacks.ShapesEvalCallback",
        "--trainer.callbacks.max_prompts=4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    grids = list(tmp_path.rglob("samples_step*.png"))
    assert len(grids) == 1, grids  # rank 0 writes, at the end of fit
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert len(accumulator.Images("samples")) == 1
    assert len(accumulator.Scalars("shapes/overall")) == 1
