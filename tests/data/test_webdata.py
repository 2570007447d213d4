"""WebDataModule reading shards: disjoint rank/worker splits, resampled epochs of one length on every rank,
the batch contract, bad samples and broken shards skipped and counted, pipe: URLs, a run resumed
mid-epoch going on where it stopped, and missing shards named at setup."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from tiny import SHARD_IMAGE_SIZE, DataOnlyModule, web_data

from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shards import ShardSink
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.evaluation.geneval import evaluate_objects
from fluid_lightning.evaluation.shapes import find_objects


def _jpeg(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_data(shapes_dir):
    out, stats = shapes_dir
    per_rank = []
    for rank in range(2):
        dm = web_data(stats["train"]["urls"], rank=rank, world_size=2, num_workers=2)
        dm.setup("fit")
        assert len(dm.rank_urls["train"]) == 4  # split in the main process
        keys = _keys(dm.train_dataloader())
        assert len(keys) == len(set(keys))
        assert dm.stats()["samples"] == len(keys)  # counted in the worker processes
        per_rank.append(set(keys))
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == {f"{i:09d}" for i in range(80)}


def test_resampled_epoch_has_the_same_length_on_every_rank(shapes_dir):
    _, stats = shapes_dir
    lengths = []
    for rank in range(2):
        dm = web_data(stats["train"]["urls"], rank=rank, world_size=2, num_workers=2, resampled=True,
                     epoch_batches=5)
        loader = dm.train_dataloader()
        counts = [sum(1 for _ in loader) for _ in range(2)]  # two epochs
        assert counts == [len(loader)] * 2
        lengths.append(len(loader))
    assert lengths == [6, 6]  # 5 rounded up to a multiple of 2 workers


def test_batches_follow_the_contract_and_match_the_renderer(shapes_dir):
    out, stats = shapes_dir
    dm = web_data(None, val_urls=str(out / "val"))  # a folder works as a spec
    batches = list(dm.val_dataloader())
    batch = batches[0]
    assert batch["image"].shape == (4, 3, SHARD_IMAGE_SIZE, SHARD_IMAGE_SIZE) and batch["image"].dtype == torch.uint8  # pixels
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)  # a view of [B, S, S, 3]
    floats = next(iter(web_data(None, val_urls=str(out / "val"), image_dtype="float32").val_dataloader()))["image"]
    assert floats.dtype == torch.float32 and floats.is_contiguous() and floats.min() >= -1 and floats.max() <= 1
    assert torch.equal(images_to_float(batch["image"]), floats)
    assert all(isinstance(c, str) for c in batch["caption"])
    assert sum(len(b["key"]) for b in batches) == 12
    # stored PNGs are lossless: colour matching on a decoded batch finds what the json says
    with Image.open(io.BytesIO(_member(stats["val"]["shards"][0], "000000000.png"))) as image:
        meta = json.loads(_member(stats["val"]["shards"][0], "000000000.json"))
        assert evaluate_objects(meta, find_objects(image))[0]
    pixels = batch["image"][0].permute(1, 2, 0).numpy()
    assert evaluate_objects(meta, find_objects(pixels))[0]
    prompts = [json.loads(line) for line in (out / "evaluation_metadata.jsonl").read_text().splitlines()]
    assert {p["tag"] for p in prompts} == set(TAGS)
    assert all(set(p) <= {"tag", "include", "exclude", "prompt"} for p in prompts)


def _member(tar_path: str, name: str) -> bytes:
    import tarfile

    with tarfile.open(tar_path) as tar:
        return tar.extractfile(name).read()


def test_bad_samples_are_skipped_and_counted_exactly(tmp_path):
    good = {}
    with ShardSink(tmp_path / "mixed", shard_size=7) as sink:
        for i in range(10):
            key = f"good{i:02d}"
            good[key] = f"noise image {i}"
            if i % 3 == 0:  # caption from the json field instead of .txt
                sink.write(key, {"jpg": _jpeg(i), "json": json.dumps({"caption": good[key]})})
            else:
                sink.write(key, {"jpg": _jpeg(i), "txt": good[key]})
        sink.write("truncated", {"jpg": _jpeg(99)[:400], "txt": "cut short"})
        sink.write("notimage", {"jpg": b"this is not a jpeg at all", "txt": "text bytes"})
        sink.write("nocaption", {"jpg": _jpeg(100)})
        sink.write("emptycaption", {"jpg": _jpeg(101), "txt": "  "})
        sink.write("noimage", {"txt": "caption without image"})
    missing = str(tmp_path / "does-not-exist.tar")
    urls = sink.shards + [missing]
    expected = {"samples": 10, "missing_image": 1, "missing_caption": 2, "bad_image": 2,
                "bad_latent": 0, "shard_errors": 1}
    for workers in (2, 0):  # counts add up across worker processes; in-process we can also see the warning
        dm = web_data(urls, num_workers=workers, shuffle_buffer=0)
        with pytest.warns(UserWarning, match="does-not-exist") if workers == 0 else _no_check():
            batches = list(dm.train_dataloader())
        got = {k: c for b in batches for k, c in zip(b["key"], b["caption"])}
        assert got == good
        assert dm.stats() == expected


def _no_check():
    import contextlib

    return contextlib.nullcontext()


def test_pipe_urls_are_read(shapes_dir):
    _, stats = shapes_dir
    shard = stats["val"]["shards"][0]
    keys = _keys(web_data(f"pipe:cat {shard}", shuffle_buffer=0).train_dataloader())
    assert len(keys) == 10


class _KeysPerStep(Callback):
    def __init__(self):
        self.keys: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.keys[trainer.global_step] = batch["key"]


def _fit_recording_keys(dm: WebDataModule, root, max_steps: int, save_at: int, ckpt_path=None) -> dict:
    record = _KeysPerStep()
    trainer = Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, callbacks=[record, ModelCheckpoint(
                          dirpath=root, every_n_train_steps=save_at, save_top_k=-1)])
    trainer.fit(DataOnlyModule(), datamodule=dm, ckpt_path=ckpt_path)
    return record.keys


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-persistent-workers"])
@pytest.mark.parametrize("resampled", [False, True], ids=["one-pass", "resampled"])
def test_a_run_resumed_mid_epoch_goes_on_where_it_stopped(shapes_dir, tmp_path, resampled, workers):
    _, stats = shapes_dir

    def dm():  # persistent workers: the resume must reach the worker copies of the stream
        return web_data(stats["train"]["urls"], num_workers=workers, persistent_workers=True, resampled=resampled,
                       epoch_batches=6 if resampled else None)

    epoch = 6 if resampled else 20  # batches per epoch
    stop = epoch + 2  # mid-way through the second epoch: epoch counting must survive the resume too
    full = _fit_recording_keys(dm(), tmp_path / "full", 3 * epoch + 1, save_at=2)
    resumed = _fit_recording_keys(dm(), tmp_path / "resumed", 3 * epoch + 1, save_at=2,
                                  ckpt_path=tmp_path / "full" / f"epoch=1-step={stop}.ckpt")
    assert sorted(resumed) == list(range(stop, 3 * epoch + 1))
    later_epochs = {step: keys for step, keys in full.items() if step >= 2 * epoch}
    assert {step: resumed[step] for step in later_epochs} == later_epochs  # the next epochs are the same
    rest_of_epoch = range(stop, 2 * epoch)
    if resampled:  # drawn afresh, not re-read: same number of batches, other samples
        assert [resumed[s] for s in rest_of_epoch] != [full[s] for s in rest_of_epoch]
    else:  # one pass: exactly the samples not yet seen, none again
        assert [resumed[s] for s in rest_of_epoch] == [full[s] for s in rest_of_epoch]
        seen = {k for step in range(epoch, stop) for k in full[step]}
        assert seen.isdisjoint(k for s in rest_of_epoch for k in resumed[s])


def test_shards_that_do_not_exist_are_named_at_setup(tmp_path):
    dm = web_data([str(tmp_path / "nope" / "train")])
    with pytest.raises(FileNotFoundError, match="no such shards.*nope"):
        dm.setup("fit")


def test_only_broken_shards_fail_loudly_instead_of_spinning(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00" * 10 + b"not a tar")
    dm = web_data([str(broken)], resampled=True, epoch_batches=2)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="shard errors in a row"):
        next(iter(dm.train_dataloader()))
    assert dm.stats()["shard_errors"] == 101
