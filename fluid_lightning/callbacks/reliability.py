"""Callbacks that keep long runs alive or stop them cleanly.

``NonFiniteLossGuard``: the module skips any step whose loss is NaN/inf (on any rank) and counts it
(``train/nonfinite_skipped``); this callback stops the run after ``max_in_a_row`` skipped steps in a
row — diverged weights do not recover by themselves — writing a checkpoint first and raising an
error that says what happened, so a scheduler does not requeue a broken run forever.

``PreemptionCheckpoint``: writes ``<checkpoint dir>/last.ckpt`` when the job is told to stop, so
``--ckpt_path last`` resumes from the latest step (through the fit's ``LastAtEndCheckpoint`` when it keeps
``last.ckpt``, so the end of fit does not write it a second time). SIGTERM: Lightning's own handler flags it on all
ranks and ends the loop with ``SIGTERMException`` after the current step; this callback saves then.
Other signals listed in ``signals`` (SIGUSR1 outside SLURM, e.g. under torchrun with a
``--signal`` wrapper) are caught here and handled the same way after the current step. Under SLURM
with ``SLURMEnvironment(auto_requeue=True)`` (Lightning's default), Lightning itself saves an
``hpc_ckpt_*.ckpt`` on SIGUSR1 and requeues the job; leave SIGUSR1 to it there.

``LastAtEndCheckpoint``: Lightning's ``ModelCheckpoint`` (every fit's ``checkpoint``), except that
``last.ckpt`` also holds the end of fit when it falls between two ``every_n_train_steps`` saves.
"""

from __future__ import annotations

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastAtEndCheckpoint(ModelCheckpoint):
    """Lightning writes ``last.ckpt`` only with a step's checkpoint, so a fit of 8300 steps with a checkpoint
    every 3500 would end with ``last.ckpt`` at step 7000; this one also writes it at the end of fit."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key: checkpoints written with either class resume alike, without a warning.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def write_last(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` now, as a step's checkpoint would, so the end of fit does not write it again at
        the same step (a second write could be cut off by the scheduler's kill after a stop signal)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return Path(self.last_model_path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not with save_last="link": the link would point at the last interval checkpoint, an earlier step.
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):  # skipped if saved
            self.write_last(trainer)
        super().on_train_end(trainer, pl_module)


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where ModelCheckpoint writes (so ``--ckpt_path last`` finds the file), else the log dir."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteLossGuard(L.Callback):
    def __init__(self, max_in_a_row: int = 10, filename: str = "nonfinite-stop.ckpt"):
        """Stop after ``max_in_a_row`` consecutive non-finite losses; the module does the skipping."""
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.filename = filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        in_a_row = getattr(pl_module, "nonfinite_in_a_row", 0)
        if in_a_row < self.max_in_a_row:
            return
        path = checkpoint_dir(trainer) / self.filename
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it (FSDP2 saves are collective)
        raise NonFiniteLossError(
            f"the loss was NaN/inf for {in_a_row} steps in a row (at step {trainer.global_step}, "
            f"{pl_module.nonfinite_total} skipped in total); stopped and saved {path}. Lower the lr, check the "
            "data, or use bf16 instead of fp16; resume from an earlier checkpoint."
        )


class PreemptionCheckpoint(L.Callback):
    def __init__(self, signals: list[str] | None = None, filename: str = "last.ckpt"):
        """``signals``: extra signal names to handle here (e.g. ``["SIGUSR1"]``); SIGTERM is always
        covered through Lightning's handler."""
        self.signals = [getattr(signal, name) for name in (signals or [])]
        self.filename = filename
        self._requested = False
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        self._requested = True  # only a flag: saving inside a signal handler could interrupt a collective

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def save(self, trainer: L.Trainer, reason: str) -> Path:
        path = checkpoint_dir(trainer) / self.filename
        keeper = trainer.checkpoint_callback
        if (isinstance(keeper, LastAtEndCheckpoint) and keeper.save_last is True
                and self.filename == keeper.CHECKPOINT_NAME_LAST + keeper.FILE_EXTENSION):
            path = keeper.write_last(trainer)  # through the checkpoint callback, which then knows this step is saved
        else:
            trainer.save_checkpoint(path, weights_only=False)  # resumable: optimizer and loops included
        if trainer.is_global_zero:
            rank_zero_warn(f"{reason}: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.signals:
            return
        # All ranks must agree before a collective save; a signal may reach only some of them.
        if trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            self._requested = False
            self.save(trainer, "stop signal received")
            trainer.should_stop = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):
            self.save(trainer, "SIGTERM received")
