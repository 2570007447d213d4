"""Writes the images of `predict` to disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from ..data.pixels import to_pil


class ImageWriter(BasePredictionWriter):
    """Saves each predicted image as ``{out_dir}/{rank}_{batch:05d}_{i:02d}.png`` and appends its
    caption to ``{out_dir}/captions_rank{rank}.jsonl``; every rank writes its own files."""

    def __init__(self, out_dir: str = "runs/predict"):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch, batch_idx: int, dataloader_idx: int
    ) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        with open(self.out_dir / f"captions_rank{rank}.jsonl", "a") as captions:
            for i, (image, caption) in enumerate(zip(to_pil(prediction["images"]), prediction["caption"])):
                name = f"{rank}_{batch_idx:05d}_{i:02d}.png"
                image.save(self.out_dir / name)
                captions.write(json.dumps({"file": name, "caption": caption}) + "\n")
