"""ImageWriter: each predicted batch becomes one PNG per image, named by rank, batch and position, with
the pixels the module returned, and one caption line per image appended to that rank's JSONL, so ranks
never write the same file. Through the `predict` command: tests/test_cli.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from fluid_lightning.callbacks.image_writer import ImageWriter


def test_each_rank_writes_its_own_pngs_and_caption_lines_batch_after_batch(tmp_path):
    writer = ImageWriter(out_dir=str(tmp_path / "predict"))
    levels = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5) / 255  # exact uint8 values, each pixel its own
    for rank in (0, 1):
        for batch_idx in (0, 7):
            prediction = {"images": levels, "caption": [f"rank {rank} batch {batch_idx} image {i}" for i in range(2)]}
            writer.write_on_batch_end(SimpleNamespace(global_rank=rank), None, prediction, None, None, batch_idx, 0)

    out = tmp_path / "predict"
    assert sorted(p.name for p in out.glob("*.png")) == [f"{r}_{b:05d}_{i:02d}.png" for r in (0, 1)
                                                         for b in (0, 7) for i in (0, 1)]
    with Image.open(out / "1_00007_01.png") as image:
        assert image.size == (5, 4)
        assert np.array_equal(np.asarray(image), (levels[1] * 255).round().byte().permute(1, 2, 0).numpy())
    lines = [json.loads(line) for line in (out / "captions_rank1.jsonl").read_text().splitlines()]
    assert lines == [{"file": f"1_{b:05d}_{i:02d}.png", "caption": f"rank 1 batch {b} image {i}"}
                     for b in (0, 7) for i in (0, 1)]
    assert len((out / "captions_rank0.jsonl").read_text().splitlines()) == 4
