"""Checkpoint files: a failed save leaves the previous checkpoint whole; a file that is not a checkpoint,
a sharded checkpoint given to a one-file strategy and a checkpoint carrying code are each named in one line;
a full disk stops a run in one line, keeps the last checkpoint whole, and resuming it finishes the run."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_runs import ENV, assert_same_weights, file_size_limit, finish, fit_command, generator_weights, start
from tiny import CONF, ROOT

from fluid_lightning.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    UnsafeCheckpointError,
    consolidate,
    safe_load,
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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The last checkpoint of a tiny 6-step run (a checkpoint every 2 steps) that nothing stopped."""
    root = tmp_path_factory.mktemp("whole")
    finish(start(fit_command(root, 6), root / "log.txt"), root / "log.txt")
    return root / "ckpt" / "last.ckpt"


def _stopped_by_a_full_disk(log: str, folder: Path) -> Path:
    """The run's last line says the disk is full and names a whole step-2 checkpoint; no temp file is left."""
    assert "Traceback" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    match = re.fullmatch(r"fluid_lightning fit: error: disk full: could not write (\S+step=4\.ckpt) \((.+?)\); "
                         r"the last good checkpoint is (\S+); the run stopped: .*--ckpt_path last", last)
    assert match, last
    survivor = Path(match[3])
    assert survivor.parent == folder and safe_load(survivor)["global_step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]  # no partial file
    return survivor


def test_a_full_file_size_limit_stops_the_run_and_resuming_finishes_it(tmp_path, uninterrupted):
    """RLIMIT_FSIZE (every POSIX system): from step 3 no file may pass 60 kB, so the step-4 save fails."""
    run = start(fit_command(tmp_path, 6, file_size_limit(after_step=3, max_bytes=60000)), tmp_path / "log.txt")
    log = finish(run, tmp_path / "log.txt", ok=False)
    assert run.returncode == 1
    _stopped_by_a_full_disk(log, tmp_path / "ckpt")
    resumed = start(fit_command(tmp_path, 6, "--ckpt_path", "last"), tmp_path / "resume.txt")
    assert "Restored all states" in finish(resumed, tmp_path / "resume.txt")
    assert_same_weights(generator_weights(tmp_path / "ckpt" / "last.ckpt"), generator_weights(uninterrupted))


@pytest.mark.slow  # two more CLI runs covering the same code as the RLIMIT_FSIZE test, on a real file system
def test_a_full_tmpfs_stops_the_run_and_resuming_elsewhere_finishes_it(tmp_path, uninterrupted):
    """A real small file system: a tmpfs with room for two checkpoints, mounted over the checkpoint folder
    in a private mount namespace (unshare: needs user namespaces, or root)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a private tmpfs")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not let a test mount a tmpfs: {probe.stderr.strip()}")
    folder, kept = tmp_path / "ckpt", tmp_path / "kept"
    folder.mkdir()
    size = int(2.5 * uninterrupted.stat().st_size)  # step 2 writes two files; step 4's first one does not fit
    command = " ".join(shlex.quote(part) for part in fit_command(tmp_path, 6))
    script = (f"mount -t tmpfs -o size={size} tmpfs {folder} && {{ {command} > {tmp_path / 'log.txt'} 2>&1; rc=$?; "
              f"cp -a {folder} {kept}; exit $rc; }}")
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT, env=ENV,
                         timeout=240)
    assert run.returncode == 1, (tmp_path / "log.txt").read_text()[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "No space left on device" in log
    survivor = _stopped_by_a_full_disk(log.replace(str(folder), str(kept)), kept)
    (tmp_path / "room").mkdir()
    resumed = start(fit_command(tmp_path / "room", 6, "--ckpt_path", str(survivor)), tmp_path / "resume.txt")
    finish(resumed, tmp_path / "resume.txt")
    assert_same_weights(generator_weights(tmp_path / "room" / "ckpt" / "last.ckpt"), generator_weights(uninterrupted))
