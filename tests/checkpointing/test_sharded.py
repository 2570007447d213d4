"""Sharded checkpoint directories are read as plain data before torch touches them: an index or a
non-tensor item carrying code is refused in one line at every entry point, and nothing runs."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from cli_runs import ENV
from tiny import CONF, ROOT

from fluid_lightning.checkpointing import (
    CheckpointError,
    UnsafeCheckpointError,
    check_sharded_checkpoint,
    consolidate,
)
from fluid_lightning.checkpointing.sharded import read_metadata
from fluid_lightning.cli import main


class Payload:
    """Unpickling this runs open(marker, "w"): what a malicious file would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def sharded(folder: Path, **extra) -> Path:
    """A DCP directory as torch writes it (tensors, plain items, a ``meta.pt``)."""
    dcp.save({"w": torch.arange(6.0).view(2, 3), "step": 7, "groups": [{"lr": 0.1}], **extra},
             checkpoint_id=folder, no_dist=True)
    torch.save({"global_step": 7}, folder / "meta.pt")
    return folder


def crafted(folder: Path, marker: Path) -> Path:
    """The directory of the issue: a harmless meta.pt and a .metadata pickle that runs code."""
    folder.mkdir()
    torch.save({"global_step": 0}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    return folder


def test_a_directory_torch_wrote_reads_as_plain_data(tmp_path):
    folder = sharded(tmp_path / "ok.ckpt")
    check_sharded_checkpoint(folder)
    assert {"w", "step", "groups.0.lr"} <= set(read_metadata(folder / ".metadata").state_dict_metadata)


def test_an_index_carrying_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = crafted(tmp_path / "evil.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil.ckpt/\.metadata.*Unsupported global.*open"):
        check_sharded_checkpoint(folder)
    assert not marker.exists()


def test_a_non_tensor_item_carrying_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = sharded(tmp_path / "evil.ckpt", payload=Payload(marker))  # torch.save'd into the shard as bytes
    with pytest.raises(UnsafeCheckpointError, match=r"__0_0.distcp \(item 'payload'\).*Unsupported global.*open"):
        consolidate(folder, tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_an_incomplete_directory_names_the_checkpoint_to_resume_from(tmp_path):
    good = sharded(tmp_path / "step=2.ckpt")
    (tmp_path / "last.ckpt").mkdir()  # a save killed before its index was written
    (tmp_path / "last.ckpt" / "__0_0.distcp").write_bytes(b"half")
    with pytest.raises(CheckpointError, match=f"not a whole sharded Lightning checkpoint.*the newest readable checkpoint beside it is {good}$"):
        check_sharded_checkpoint(tmp_path / "last.ckpt")


def test_the_crafted_directory_is_refused_in_one_line_by_every_command(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = crafted(tmp_path / "evil.ckpt", marker)
    with pytest.raises(SystemExit) as exit_info:
        main(["checkpoint", "consolidate", str(folder), str(tmp_path / "out.safetensors")])
    assert "refusing to load" in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)
    fsdp2 = ["--config", str(CONF / "trainer/fsdp2.yaml"), "--config", str(CONF / "data/shapes.yaml"), "--config",
             str(CONF / "model/tiny_fluid.yaml"), "--trainer.devices=1", "--trainer.accelerator=cpu",
             "--trainer.precision=32-true", "--trainer.max_steps=1", "--data.init_args.batch_size=4",
             "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
             "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(folder)]
    for command in ("fit", "validate", "test"):
        proc = subprocess.run([sys.executable, "-m", "fluid_lightning", command, *fsdp2], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=240)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert last.startswith(f"fluid_lightning {command}: error: refusing to load {folder}/.metadata"), last
        assert not marker.exists()
