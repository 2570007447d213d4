"""FSDP2 checkpoints (directories of shards) are published atomically: a save that fails part-way
leaves the previous checkpoint whole and resumable; their metadata file is loaded weights-only.

Run as a script it is the worker that trains under ``AtomicModelParallelStrategy`` in its own
process (the strategy starts a process group, which must not leak into the test process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import ENV, file_size_limit, wait_for
from tiny import CONF, ROOT

from fluid_lightning.checkpointing import AtomicModelParallelStrategy, publish_atomically, safe_load
from fluid_lightning.checkpointing.consolidate import read_training_checkpoint


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_publish_replaces_a_checkpoint_directory_whole(tmp_path, monkeypatch, exchange):
    if not exchange:  # macOS / NFS: no RENAME_EXCHANGE
        monkeypatch.setattr("fluid_lightning.checkpointing.strategy._exchange", lambda a, b: False)
    target, staging = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    for folder, text in ((target, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "meta.pt").write_text(text)
        (folder / f"__0_{text}.distcp").write_text(text)
    publish_atomically(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["__0_new.distcp", "meta.pt"]
    assert (target / "meta.pt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # nothing left behind


def test_a_copy_left_by_an_interrupted_swap_is_loaded_then_cleaned_up(tmp_path, monkeypatch):
    target, old = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.old"
    old.mkdir()  # killed between `target -> .old` and `staging -> target`
    (old / "meta.pt").write_text("previous")
    strategy = AtomicModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    monkeypatch.setattr(strategy, "broadcast", lambda obj, src=0: obj)
    loaded, checked = [], []
    monkeypatch.setattr("fluid_lightning.checkpointing.strategy.check_sharded_checkpoint", checked.append)
    monkeypatch.setattr("lightning.pytorch.strategies.ModelParallelStrategy.load_checkpoint",
                        lambda self, path, weights_only=None: loaded.append((Path(path), weights_only)) or {})
    with pytest.warns(UserWarning, match="loading the previous checkpoint"):
        strategy.load_checkpoint(target)
    assert loaded == [(old, True)] and checked == [old]

    staging = tmp_path / ".last.ckpt.partial"
    staging.mkdir()
    (staging / "meta.pt").write_text("new")
    publish_atomically(staging, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_publish_replaces_a_file_with_a_directory(tmp_path):
    target, staging = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    target.write_text("single-file checkpoint")
    staging.mkdir()
    (staging / "meta.pt").write_text("sharded")
    publish_atomically(staging, target)
    assert (target / "meta.pt").read_text() == "sharded" and not staging.exists()


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_failed_sharded_save_leaves_the_last_checkpoint_resumable(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["failed_save"] == "disk full at step 3"
    assert result["after_failure"] == {"step": 2, "staging_left": False}  # shards written, never published
    assert result["resumed_to"] == 4 and result["leftovers"] == []
    assert "refusing to load" in result["malicious"] and "posix.system" in result["malicious"]
    assert not (tmp_path / "pwned.txt").exists()


def fsdp2_fit(root: Path, max_steps: int = 6) -> list[str]:
    """A tiny FSDP2 fit on 2 gloo processes (deterministic), writing only last.ckpt, every 2 steps."""
    return [sys.executable, "-m", "fluid_lightning", "fit", "--config", str(CONF / "trainer/fsdp2.yaml"),
            "--config", str(CONF / "data/shapes.yaml"), "--config", str(CONF / "model/tiny_fluid.yaml"),
            "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
            "--trainer.deterministic=true", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--checkpoint.every_n_train_steps=2", "--checkpoint.save_top_k=0", "--trainer.default_root_dir",
            str(root), f"--trainer.max_steps={max_steps}"]


def test_a_job_killed_during_a_sharded_save_resumes_from_the_previous_whole_checkpoint(tmp_path):
    """SIGKILL to both processes while the step-4 shards are being written; ``--ckpt_path last`` then
    resumes from step 2, never from the half-written folder."""
    folder, command = tmp_path / "checkpoints", fsdp2_fit(tmp_path)
    with (tmp_path / "killed.txt").open("w") as log:
        job = subprocess.Popen([*command, "--trainer.callbacks+=cli_runs.SlowShardedSave"], cwd=ROOT, env=ENV,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(tmp_path / "mid-save", job, timeout=240)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it launched
        job.wait()
    assert (folder / ".last.ckpt.partial").is_dir() and list((folder / ".last.ckpt.partial").glob("*.distcp"))
    assert safe_load(folder / "last.ckpt" / "meta.pt")["global_step"] == 2

    resumed = subprocess.run([*command, "--ckpt_path", "last"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {folder / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    assert "Restored all states" in resumed.stdout + resumed.stderr
    assert safe_load(folder / "last.ckpt" / "meta.pt")["global_step"] == 6
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # the half-written folder is gone


@pytest.mark.slow  # three 2-process runs: ~90 s on 2 cores
def test_a_full_disk_during_a_sharded_save_stops_every_rank_and_resuming_finishes_the_run(tmp_path):
    """From step 3 no file may pass 60 kB (RLIMIT_FSIZE, both ranks): the step-4 shards cannot be written.
    Every rank stops with one line (rank 1's may be cut off when rank 0 ends the job first), the step-2 folder is whole, no staging folder is left, and resuming
    on a disk with room ends on the weights of an uninterrupted run."""
    whole = subprocess.run(fsdp2_fit(tmp_path / "whole"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-4000:]
    root = tmp_path / "full"
    full = subprocess.run([*fsdp2_fit(root), file_size_limit(after_step=3, max_bytes=60000)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    last = root / "checkpoints" / "last.ckpt"
    stopped = [line for line in full.stderr.splitlines() if line.startswith("fluid_lightning fit: error:")]
    assert full.returncode != 0 and "Traceback" not in full.stderr, full.stderr[-4000:]
    assert stopped and all(f"disk full: could not write {last} (File too large); {last} still holds the "
                                     "previous checkpoint" in line for line in stopped), stopped
    assert safe_load(last / "meta.pt")["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    resumed = subprocess.run([*fsdp2_fit(root), "--ckpt_path", "last"], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got = read_training_checkpoint(last)[0]
    expected = read_training_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")[0]
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def _worker(root: Path, out: Path) -> None:
    import lightning as L
    import lightning.pytorch.strategies.model_parallel as model_parallel
    from lightning.pytorch.callbacks import ModelCheckpoint
    from tiny import tiny_module

    from fluid_lightning.checkpointing import safe_load
    from fluid_lightning.data.shapes import ShapesDataModule

    ckpt_dir, result = root / "ckpt", {}

    def trainer(max_steps: int) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
            strategy=AtomicModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
            callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=0, save_last=True)])

    def data() -> ShapesDataModule:
        return ShapesDataModule(image_size=32, num_train=64, batch_size=4)

    real_save, saves = model_parallel._distributed_checkpoint_save, []

    def save_then_fail(state, path):  # the shards reach the disk, then the job dies before meta.pt
        real_save(state, path)
        saves.append(path)
        if len(saves) == 3:
            raise OSError("disk full at step 3")

    model_parallel._distributed_checkpoint_save = save_then_fail
    try:
        trainer(5).fit(tiny_module(), data())
    except OSError as err:
        result["failed_save"] = str(err)
    model_parallel._distributed_checkpoint_save = real_save
    result["after_failure"] = {"step": safe_load(ckpt_dir / "last.ckpt" / "meta.pt")["global_step"],
                               "staging_left": (ckpt_dir / ".last.ckpt.partial").exists()}

    resumed = trainer(4)
    resumed.fit(tiny_module(), data(), ckpt_path="last")
    result["resumed_to"] = safe_load(ckpt_dir / "last.ckpt" / "meta.pt")["global_step"]
    result["leftovers"] = sorted(p.name for p in ckpt_dir.iterdir() if p.name != "last.ckpt")

    bad = root / "bad.ckpt"
    shutil.copytree(ckpt_dir / "last.ckpt", bad)
    torch.save({"global_step": Payload()}, bad / "meta.pt")
    try:
        trainer(6).fit(tiny_module(), data(), ckpt_path=str(bad))
        result["malicious"] = "loaded"
    except Exception as err:  # noqa: BLE001 - the message is what the test checks
        result["malicious"] = f"{type(err).__name__}: {err}"
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
