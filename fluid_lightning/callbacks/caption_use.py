"""CaptionUse: does the generator read its caption? Logged at every validation of a generator fit.

At each validation batch it asks the module for the batch's tokens and text and measures, with the
sampling (EMA) weights, ``caption/shuffle_gap`` (the loss with the batch's captions shuffled among its
images, minus the loss with the true ones, on the same draws) and ``caption/spread`` (how far the
condition with nothing revealed moves across the batch's distinct captions); see
``evaluation/caption_use.py``. Both are averaged over the validation batches and ranks. A healthy
text-to-image run sees both rise from ~0 early in training (docs/training.md). Modules without a
text-conditioned generator are left alone.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..evaluation.caption_use import condition_spread, first_of_each, shuffle_gap
from ..parallel import gathered


class CaptionUse(Callback):
    def __init__(self, max_batches: int | None = None, seed: int = 0):
        """``max_batches``: measure on the first N validation batches of each validation (None: all
        that the trainer runs, ``limit_val_batches``). ``seed``: the draws (masks, timesteps, noise)
        of batch i come from seed + i, so each validation measures the same thing."""
        self.max_batches, self.seed = max_batches, seed

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not callable(getattr(pl_module, "encode_batch", None)):
            return
        if self.max_batches is not None and batch_idx >= self.max_batches:
            return
        tokens, text, text_mask = pl_module.encode_batch(batch)
        generator = pl_module.sampling_generator
        true, shuffled = shuffle_gap(generator, tokens, text, text_mask, self.seed + batch_idx)
        distinct = first_of_each(list(batch["caption"]))  # the batch's text rows, not a second T5 pass
        with gathered(generator):  # FSDP2: the blank conditions bypass forward
            spread = condition_spread(generator, text[distinct], text_mask[distinct])
        size = tokens.shape[0]
        for name, value in (("caption/shuffle_gap", shuffled - true), ("caption/spread", spread)):
            pl_module.log(name, value, on_epoch=True, sync_dist=True, batch_size=size, prog_bar=True)
