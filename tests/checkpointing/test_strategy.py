"""FSDP2 checkpoints (directories of shards) are published atomically: a save that fails part-way
leaves the previous checkpoint whole and resumable; their metadata file is loaded weights-only.

Run as a script it is the worker that trains under ``AtomicModelParallelStrategy`` in its own
process (the strategy starts a process group, which must not leak into the test process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import ROOT

from fluid_lightning.checkpointing import AtomicModelParallelStrategy, publish_atomically


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
    assert result["after_failure"] == {"step": 2, "staging_has_meta": False}  # shards written, never published
    assert result["resumed_to"] == 4 and result["leftovers"] == []
    assert "refusing to load" in result["malicious"] and "posix.system" in result["malicious"]
    assert not (tmp_path / "pwned.txt").exists()


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
                               "staging_has_meta": (ckpt_dir / ".last.ckpt.partial" / "meta.pt").exists()}

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
