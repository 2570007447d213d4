"""Reliability of training runs: a SIGKILLed run resumes from its last checkpoint and ends with the weights
of an uninterrupted run (deterministic mode); SIGTERM and SIGUSR1 save a checkpoint; NaN losses skip steps
and too many in a row stop the run. (A run resumed mid-epoch continues with the unseen batches:
tests/data/test_resumable.py.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_runs import assert_same_weights, finish, fit_command, generator_weights, start, wait_for
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import CONF, tiny_module

from fluid_lightning.callbacks import NonFiniteLossGuard, PreemptionCheckpoint
from fluid_lightning.callbacks.reliability import LastAtEndCheckpoint, NonFiniteLossError
from fluid_lightning.checkpointing import safe_load
from fluid_lightning.cli import main
from fluid_lightning.data.shapes import ShapesDataModule
from fluid_lightning.lit.generator_module import GeneratorModule


@pytest.mark.slow  # three short CLI runs: ~60-90 s on 2 shared cores
def test_sigkilled_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    steps = 10
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    killed.mkdir()
    reference = start(fit_command(whole, steps), whole / "log.txt")
    victim = start(fit_command(killed, steps), killed / "log.txt")
    wait_for(killed / "ckpt" / "*step=4*.ckpt", victim)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stopped_at = safe_load(killed / "ckpt" / "last.ckpt")["global_step"]
    assert 2 <= stopped_at < steps  # the kill may land between the step=4 file and last.ckpt

    resumed = start(fit_command(killed, steps, "--ckpt_path", "last"), killed / "resume.txt")
    assert "Restored all states" in finish(resumed, killed / "resume.txt")
    finish(reference, whole / "log.txt")
    for ckpt in (killed / "ckpt").glob("*.ckpt"):  # every file on disk is a complete checkpoint
        safe_load(ckpt)
    final = safe_load(killed / "ckpt" / "last.ckpt")
    assert final["global_step"] == steps  # continued from stopped_at, not from 0
    assert_same_weights(generator_weights(killed / "ckpt" / "last.ckpt"), generator_weights(whole / "ckpt" / "last.ckpt"))


def test_sigterm_saves_a_checkpoint_that_ckpt_path_last_resumes(tmp_path):
    proc = start(fit_command(tmp_path, 50, stock_callbacks=True), tmp_path / "log.txt")
    wait_for(tmp_path / "step2", proc)
    proc.send_signal(signal.SIGTERM)
    text = finish(proc, tmp_path / "log.txt", ok=False)
    assert "SIGTERM received: saved" in text, text[-3000:]
    stopped_at = safe_load(tmp_path / "checkpoints/last.ckpt")["global_step"]
    assert stopped_at >= 2

    resumed = start(fit_command(tmp_path, stopped_at + 1, "--ckpt_path", "last", "--model.init_args.lr=0.123",
                                stock_callbacks=True), tmp_path / "resume.txt")
    text = finish(resumed, tmp_path / "resume.txt")
    assert "Restored all states" in text
    assert "replace these given settings: init_args.lr: 0.123 -> 0.0005" in text  # not dropped silently
    assert safe_load(tmp_path / "checkpoints/last.ckpt")["global_step"] == stopped_at + 1


def poison(module: GeneratorModule, bad_steps) -> None:
    """Make the loss NaN at the given optimizer steps."""
    clean = module._loss

    def loss(batch):
        value, b = clean(batch)
        return (value * float("nan") if module.trainer.global_step in bad_steps else value), b

    module._loss = loss


def tiny_fit(module: GeneratorModule, tmp_path: Path, max_steps: int, callbacks: list) -> L.Trainer:
    """A short fit with only the given callbacks (Lightning's default checkpointing only if one of them is it)."""
    checkpointing = any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=checkpointing,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(module, ShapesDataModule(image_size=32, num_train=64, batch_size=4))
    return trainer


class WeightWatch(L.Callback):
    def __init__(self):
        self.changed: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = module.generator.embed.weight.detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.changed.append(not torch.equal(self.before, module.generator.embed.weight))


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_a_nan_loss_skips_one_step_and_training_goes_on(tmp_path, optimizer):
    module = tiny_module(optimizer=optimizer)
    poison(module, bad_steps={2})
    watch = WeightWatch()
    trainer = tiny_fit(module, tmp_path, 5, [NonFiniteLossGuard(max_in_a_row=3), watch])
    assert module.nonfinite_total == 1 and module.nonfinite_in_a_row == 0
    assert watch.changed == [True, True, False, True, True] and trainer.global_step == 5
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())


def test_nan_losses_in_a_row_stop_with_a_message_and_a_checkpoint(tmp_path):
    module = tiny_module()
    poison(module, bad_steps=range(1, 100))
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 2 steps in a row"):
        tiny_fit(module, tmp_path, 10, [NonFiniteLossGuard(max_in_a_row=2)])
    saved = safe_load(tmp_path / "checkpoints" / "nonfinite-stop.ckpt")
    assert saved["nonfinite_total"] == 2
    assert all(torch.isfinite(v).all() for k, v in saved["state_dict"].items() if v.is_floating_point())


class SendSignal(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_outside_slurm_saves_and_stops_after_the_step(tmp_path):
    previous = signal.getsignal(signal.SIGUSR1)
    trainer = tiny_fit(tiny_module(), tmp_path, 10, [SendSignal(), PreemptionCheckpoint(signals=["SIGUSR1"])])
    assert trainer.global_step == 2
    assert safe_load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) == previous  # handler removed after fit


class CountSaves(L.Callback):
    def __init__(self):
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer, module, checkpoint):
        self.steps.append(trainer.global_step)


def test_a_stop_signal_writes_last_ckpt_once_through_the_checkpoint_callback(tmp_path):
    """After SIGUSR1 the run saves last.ckpt once: the end of fit does not write it again at the same step,
    where a scheduler's kill could cut the second write off."""
    saves = CountSaves()
    keeper = LastAtEndCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=100,
                                 enable_version_counter=False)
    callbacks = [SendSignal(), PreemptionCheckpoint(signals=["SIGUSR1"]), keeper, saves]
    trainer = tiny_fit(tiny_module(), tmp_path, 10, callbacks)
    assert trainer.global_step == 2
    assert saves.steps == [2]
    assert safe_load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_last_ckpt_holds_the_end_of_fit_between_two_interval_checkpoints(tmp_path):
    """With a checkpoint every 2 steps, a 3-step fit still ends with last.ckpt at step 3 (Lightning's own
    ModelCheckpoint leaves it at step 2), and its state resumes under ModelCheckpoint's own key."""
    root = tmp_path / "run"
    main(["fit", "--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"),
          "--config", str(CONF / "model/tiny_fluid.yaml"), "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
          "--data.init_args.batch_size=4", "--data.init_args.num_train=12", "--trainer.enable_progress_bar=false",
          "--checkpoint.every_n_train_steps=2", "--trainer.default_root_dir", str(root)])
    saved = {p.name: safe_load(p)["global_step"] for p in (root / "checkpoints").glob("*.ckpt")}
    assert saved == {"epoch=0-step=2.ckpt": 2, "last.ckpt": 3}
    assert any(key.startswith("ModelCheckpoint{") for key in safe_load(root / "checkpoints/last.ckpt")["callbacks"])
