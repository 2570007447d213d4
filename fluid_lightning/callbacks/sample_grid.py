"""SampleGrid: every N optimizer steps (and at the end of fit), sample fixed prompts and log a grid.

The callback owns *when* and *where*; the module owns *what* (``pl_module.log_images``,
EMA weights). Every rank runs the sampler, because under FSDP the forward pass is a
collective; only global rank 0 writes (TensorBoard image + prompts text, and a PNG).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from fluid_lightning.pipeline import make_grid, to_pil

from .periodic import PeriodicCallback


class SampleGrid(PeriodicCallback):
    def __init__(self, prompts: list[str], every_n_steps: int = 500, on_fit_end: bool = True, num_steps: int = 32,
                 cfg: float = 3.0, temperature: float = 1.0, seed: int = 0, out_dir: str | None = None,
                 columns: int | None = None, tag: str = "samples"):
        """``every_n_steps``: optimizer steps between grids (0 = only at the end). ``seed``: the
        same noise every time, so grids over training show the model changing, not the noise.
        ``out_dir``: where PNGs go; default ``<trainer.log_dir>/samples``. ``columns``: grid
        width (default: about square)."""
        if not prompts:
            raise ValueError("SampleGrid needs at least one prompt")
        self.prompts = list(prompts)
        super().__init__(every_n_steps, on_fit_end)
        self.sample_kwargs = {"num_steps": num_steps, "cfg": cfg, "temperature": temperature, "seed": seed}
        self.out_dir, self.columns, self.tag = out_dir, columns, tag
        self._warned = False

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "log_images"):
            if not self._warned:
                rank_zero_warn(f"SampleGrid: {type(pl_module).__name__} has no log_images(prompts, ...); "
                               "no sample grids will be logged")
                self._warned = True
            return
        step = trainer.global_step
        images = pl_module.log_images(self.prompts, **self.sample_kwargs)  # on every rank (FSDP)
        # trainer.log_dir is a collective (it broadcasts rank 0's path): ask on every rank.
        out = Path(self.out_dir) if self.out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        if not trainer.is_global_zero:
            return
        grid = make_grid(to_pil(images), columns=self.columns)
        prompts_text = "\n".join(f"{i}. {p}" for i, p in enumerate(self.prompts))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
                experiment.add_image(self.tag, np.asarray(grid), step, dataformats="HWC")
                experiment.add_text(f"{self.tag}/prompts", prompts_text.replace("\n", "  \n"), step)
        out.mkdir(parents=True, exist_ok=True)
        grid.save(out / f"{self.tag}_step{step:07d}.png")
        (out / f"{self.tag}_prompts.txt").write_text(prompts_text + "\n", encoding="utf-8")
