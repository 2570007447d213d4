"""Image grids every N optimizer steps (and at the end of fit), in TensorBoard and as PNGs.

- ``SampleGrid`` (generators): samples fixed prompts.
- ``ReconstructionGrid`` (tokenizers): fixed validation images over their reconstructions.

The callback owns *when* and *where*; the module owns *what* (``pl_module.log_images``,
EMA weights). Every rank runs the model, because under FSDP the forward pass is a
collective; only global rank 0 writes (TensorBoard image + caption text, and a PNG).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from PIL import Image

from fluid_lightning.pipeline import make_grid, to_pil

from .periodic import PeriodicCallback, val_loader


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
        images = pl_module.log_images(self.prompts, **self.sample_kwargs)  # on every rank (FSDP)
        publish_grid(trainer, make_grid(to_pil(images), columns=self.columns), self.tag,
                     "\n".join(f"{i}. {p}" for i, p in enumerate(self.prompts)), self.out_dir)


class ReconstructionGrid(PeriodicCallback):
    """Validation images (top row) over the module's reconstructions of them (bottom row), for
    ``TokenizerModule`` (``log_images(images)``: EMA weights when kept). The same images each time,
    taken from the first validation batch, so grids over training show the tokenizer changing."""

    def __init__(self, num_images: int = 8, every_n_steps: int = 500, on_fit_end: bool = True,
                 out_dir: str | None = None, tag: str = "reconstructions"):
        if num_images < 1:
            raise ValueError("ReconstructionGrid needs num_images >= 1")
        super().__init__(every_n_steps, on_fit_end)
        self.num_images, self.out_dir, self.tag = num_images, out_dir, tag
        self._images: torch.Tensor | None = None
        self._off = False

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._off:
            return
        if self._images is None:
            loader = val_loader(trainer, "ReconstructionGrid")
            batch = next(iter(loader), None) if loader is not None else None
            if batch is None or "image" not in batch or not hasattr(pl_module, "log_images"):
                rank_zero_warn("ReconstructionGrid: needs validation images and a module with log_images(images); "
                               "no reconstruction grids will be logged")
                self._off = True
                return
            self._images = batch["image"][: self.num_images]
        recon = pl_module.log_images(self._images)
        originals = ((self._images.clamp(-1, 1) + 1) / 2).float()
        grid = make_grid(to_pil(torch.cat([originals, recon.cpu()])), columns=len(originals))
        publish_grid(trainer, grid, self.tag, "top: validation images; bottom: their reconstructions", self.out_dir,
                     text_name="layout")


def publish_grid(trainer: L.Trainer, grid: Image.Image, tag: str, text: str, out_dir: str | None,
                 text_name: str = "prompts") -> None:
    """TensorBoard image + text at the current step; ``<out_dir or log_dir/samples>/<tag>_stepN.png`` and
    ``<tag>_<text_name>.txt``."""
    step = trainer.global_step
    # trainer.log_dir is a collective (it broadcasts rank 0's path): ask on every rank.
    out = Path(out_dir) if out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "samples"
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
            experiment.add_image(tag, np.asarray(grid), step, dataformats="HWC")
            experiment.add_text(f"{tag}/{text_name}", text.replace("\n", "  \n"), step)
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / f"{tag}_step{step:07d}.png")
    (out / f"{tag}_{text_name}.txt").write_text(text + "\n", encoding="utf-8")
