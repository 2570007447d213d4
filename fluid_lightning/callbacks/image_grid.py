"""ImageGrid: the module's images every N optimizer steps (and at the end of fit), in TensorBoard
and as PNGs, enlarged and captioned so they read at a glance.

For a generator it samples fixed ``prompts`` (the same seed every time, so grids over training show
the model changing, not the noise); for a tokenizer (no prompts) it shows the first validation
images over their reconstructions. Every rank runs the model (under FSDP the forward pass is a
collective); only global rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image

from ..data.pixels import make_grid, to_pil
from ..sampling import SamplingSettings
from .periodic import ImageCallback, val_loader


class ImageGrid(ImageCallback):
    def __init__(self, prompts: list[str] | None = None, num_images: int = 8, every_n_steps: int = 500,
                 on_fit_end: bool = True, sampling: SamplingSettings | None = None, batch_size: int = 64,
                 scale: int = 4, columns: int | None = None, out_dir: str | None = None, tag: str = "samples"):
        """``prompts``: what a generator draws; without them, the first ``num_images`` validation images
        (and captions) are the batch. ``scale``: nearest-neighbour enlargement of each image.
        ``columns``: grid width (default: one row per image kind, or about square for prompts).
        ``out_dir``: where PNGs go; default ``<trainer.log_dir>/samples``."""
        if prompts is not None and not prompts:
            raise ValueError("ImageGrid: give at least one prompt, or none to use validation images")
        if num_images < 1 or scale < 1:
            raise ValueError("ImageGrid needs num_images >= 1 and scale >= 1")
        super().__init__(every_n_steps, on_fit_end, sampling, batch_size)
        self.prompts, self.num_images, self.scale = prompts, num_images, scale
        self.columns, self.out_dir, self.tag = columns, out_dir, tag
        self._batch: dict[str, Any] | None = None

    def _fixed_batch(self, trainer: L.Trainer) -> dict[str, Any] | None:
        if self._batch is None and self.prompts is not None:
            self._batch = {"caption": list(self.prompts)}
        elif self._batch is None:
            loader = val_loader(trainer, type(self).__name__)
            batch = next(iter(loader), None) if loader is not None else None
            if batch is None:
                self.switch_off("no prompts given and no validation batch to draw")
                return None
            self._batch = {key: value[: self.num_images] for key, value in batch.items()
                           if isinstance(value, (list, torch.Tensor))}
        return self._batch

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch = self._fixed_batch(trainer)
        if batch is None:
            return
        outputs = self.images(pl_module, batch)
        if not outputs:
            return
        kinds = list(outputs)
        images = [image for kind in kinds for image in to_pil(outputs[kind])]
        captions = [f"{kind}: {c}" if len(kinds) > 1 else c for kind in kinds
                    for c in batch.get("caption", [""] * len(outputs[kind]))]
        columns = self.columns or (len(outputs[kinds[0]]) if len(kinds) > 1 else None)
        grid = make_grid(images, columns=columns, captions=captions, scale=self.scale)
        publish_grid(trainer, grid, self.tag, "\n".join(f"{i}. {c}" for i, c in enumerate(captions)), self.out_dir)


def publish_grid(trainer: L.Trainer, grid: Image.Image, tag: str, text: str, out_dir: str | None) -> None:
    """TensorBoard image + its captions as text at the current step; ``<out_dir or log_dir/samples>/
    <tag>_stepN.png`` and ``<tag>_captions.txt``."""
    step = trainer.global_step
    # trainer.log_dir is a collective (it broadcasts rank 0's path): ask on every rank.
    out = Path(out_dir) if out_dir else Path(trainer.log_dir or trainer.default_root_dir) / "samples"
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
            experiment.add_image(tag, np.asarray(grid), step, dataformats="HWC")
            experiment.add_text(f"{tag}/captions", text.replace("\n", "  \n"), step)
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / f"{tag}_step{step:07d}.png")
    (out / f"{tag}_captions.txt").write_text(text + "\n", encoding="utf-8")
