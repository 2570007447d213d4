"""Checkpoint files: a failed save leaves the previous checkpoint whole; a file that is not a checkpoint,
a sharded checkpoint given to a one-file strategy and a checkpoint carrying code are each named in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny import CONF

from fluid_lightning.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    UnsafeCheckpointError,
    consolidate,
)
from fluid_lightning.cli import main
from fluid_lightning.pipeline import FluidPipeline


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails halfway through the write
        io.save_checkpoint({"step": 2, "w": torch.zeros(3), "bad": lambda: None}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path / "good.ckpt")
    (tmp_path / "text.ckpt").write_text("hello")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "good.ckpt").read_bytes()[:300])
    for name in ("text.ckpt", "cut.ckpt"):
        with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
            io.load_checkpoint(tmp_path / name)


def test_a_sharded_checkpoint_given_to_a_one_file_strategy_names_the_fix(tmp_path):
    (tmp_path / "last.ckpt").mkdir()
    with pytest.raises(CheckpointError, match="conf/trainer/fsdp2.yaml"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")


class Payload:
    """Unpickling this runs open(marker, "w"): what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_carrying_code_is_refused_in_one_line_at_every_entry_point(tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "hyper_parameters": {"lr": 1.0}, "payload": Payload(marker)}, evil)
    refused = r"refusing to load .*evil.ckpt.*not a plain weights checkpoint \(Unsupported global.*open"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        AtomicCheckpointIO().load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError, match=refused):
        consolidate(evil, tmp_path / "out.safetensors")
    with pytest.raises(UnsafeCheckpointError, match=refused):
        FluidPipeline.from_checkpoint(evil)
    tiny = ["--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"), "--config",
            str(CONF / "model/tiny_fluid.yaml"), "--trainer.max_steps=1", "--trainer.default_root_dir", str(tmp_path)]
    commands = {
        "sample": ["sample", "--ckpt", str(evil), "--prompt", "x", "--out", str(tmp_path / "s")],
        "evaluate": ["evaluate", "generate", "--ckpt", str(evil), "--out", str(tmp_path / "g")],
        "checkpoint": ["checkpoint", "consolidate", str(evil), str(tmp_path / "out.safetensors")],
        "tokenizer": ["tokenizer", "export", "--ckpt", str(evil), "--out", str(tmp_path / "t")],
        "fit": ["fit", *tiny, "--ckpt_path", str(evil)],
        "validate": ["validate", *tiny, "--ckpt_path", str(evil)],
    }
    for name, argv in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = str(exit_info.value.code)
        assert re.fullmatch(f"fluid_lightning {name}: error: {refused}.*", message), message
        assert "\n" not in message and "weights_only=False" not in message, message
    assert not marker.exists()
