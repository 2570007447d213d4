"""The `data` command: shapes-world shards with GenEval metadata, and shards of an image folder with the
broken and uncaptioned images skipped and counted."""

import argparse
import io
import json

import numpy as np
from PIL import Image

from fluid_lightning.commands import data
from fluid_lightning.data.shards import write_image_shards
from fluid_lightning.data.webdata import WebDataModule


def _jpeg(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_shapes_and_shards_commands_report_what_they_wrote_and_skipped(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    args = parser.parse_args(["shapes", "--out", str(tmp_path / "s"), "--n", "12", "--val-n", "4",
                              "--size", "32", "--shard-size", "5", "--no-progress"])
    stats = args.run(args)
    printed = capsys.readouterr().out
    assert "train: 12 samples in 3 shards" in printed and "val: 4 samples in 1 shards" in printed
    assert stats["evaluation_prompts"] == len((tmp_path / "s" / "evaluation_metadata.jsonl").read_text().splitlines())

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.open(io.BytesIO(_jpeg(i))).save(folder / f"img{i}.png")
        if i != 4:
            (folder / f"img{i}.txt").write_text(f"caption {i}\n")
    (folder / "broken.jpg").write_bytes(b"garbage")
    (folder / "broken.txt").write_text("broken")
    args = parser.parse_args(["shards", "--from", str(folder), "--out", str(tmp_path / "o"), "--shard-size", "3",
                              "--no-progress"])
    stats = args.run(args)
    assert stats["written"] == 4 and stats["skipped"] == {"missing_caption": 1, "bad_image": 1}
    assert "written: 4 samples in 2 shards" in capsys.readouterr().out
    data_module = WebDataModule(stats["urls"], image_size=32, batch_size=4, num_workers=0, shuffle_buffer=0,
                                resampled=False)
    captions = {c for b in data_module.train_dataloader() for c in b["caption"]}
    assert captions == {f"caption {i}" for i in range(4)}

    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text("".join(json.dumps({"image": f"imgs/img{i}.png", "caption": f"c{i}"}) + "\n" for i in range(3)))
    stats = write_image_shards(jsonl, tmp_path / "j", progress=False)
    assert stats["written"] == 3 and stats["skipped"] == {}
