"""LineProgress: one plain line of progress every ``interval`` seconds, for log files.

A terminal gets Lightning's tqdm bar. A log file (SLURM, ``nohup ... > log``) would get a carriage-
return bar it cannot show, behind block buffering; the CLI puts this progress bar in its place when
stdout is not a terminal, so a log shows step, loss and speed while the run goes on:

    step 500/3000 (16.7%) | train/loss 0.412 | 2.1 steps/s | 41.3 images/s | eta 19m50s
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from .throughput import batch_size_of


class LineProgress(ProgressBar):
    def __init__(self, interval: float = 30.0):
        """``interval``: seconds between lines during training (the first and last step always print)."""
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._start: tuple[float, int] | None = None
        self._last_print = 0.0
        self._images = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = (time.perf_counter(), trainer.global_step)
        self._last_print = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        try:
            self._images += batch_size_of(batch)
        except ValueError:  # a batch of another shape: no images/s
            pass
        now = time.perf_counter()
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if self._enabled and (now - self._last_print >= self.interval or last or self._last_print == 0.0):
            self._last_print = now
            self.print(self.line(trainer, now))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith(("val", "caption"))}
        if self._enabled and not trainer.sanity_checking and metrics:
            self.print(f"validation at step {trainer.global_step} | " + " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))

    def line(self, trainer: L.Trainer, now: float) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total} ({100 * step / total:.1f}%)" if total > 0 else f"step {step}"]
        metrics = self.get_metrics(trainer, trainer.lightning_module)
        parts += [f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "v_num" and not k.startswith("val")]
        start_time, start_step = self._start or (now, step)
        seconds, steps = now - start_time, step - start_step
        if seconds > 0 and steps > 0:
            rate = steps / seconds
            parts += [f"{rate:.2f} steps/s", f"{self._images / seconds:.1f} images/s"]
            if total > 0:
                left = (total - step) / rate
                parts.append(f"eta {int(left // 60)}m{int(left % 60):02d}s")
        return " | ".join(parts)

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(*args, **kwargs, file=sys.stdout, flush=True)


def _fmt(value: Any) -> str:
    return f"{float(value):.4g}" if isinstance(value, (int, float)) or hasattr(value, "item") else str(value)

