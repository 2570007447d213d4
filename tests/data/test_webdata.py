"""Shard writing and WebDataModule reading: rank/worker splits, bad data, latents, resume."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from fluid_lightning.callbacks import DataStatsLogger
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shards import (
    ShardSink,
    write_latent_shards,
    write_shapes_shards,
)
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.data.webdata import WebDataModule, expand_shard_urls
from fluid_lightning.evaluation.geneval import evaluate_objects
from fluid_lightning.evaluation.shapes import find_objects

SIZE = 32


def _jpeg(seed: int, size: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _module(urls, **overrides) -> WebDataModule:
    args = dict(image_size=SIZE, batch_size=4, num_workers=0, shuffle_buffer=8, pin_memory=False,
                persistent_workers=False, resampled=False)
    args.update(overrides)
    return WebDataModule(urls, **args)


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    stats = write_shapes_shards(out, n=80, val_n=12, size=SIZE, shard_size=10, progress=False)
    assert stats["train"]["written"] == 80 and len(stats["train"]["shards"]) == 8
    return out, stats


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_data(shapes_dir):
    out, stats = shapes_dir
    per_rank = []
    for rank in range(2):
        dm = _module(stats["train"]["urls"], rank=rank, world_size=2, num_workers=2)
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
        dm = _module(stats["train"]["urls"], rank=rank, world_size=2, num_workers=2, resampled=True,
                     epoch_batches=5)
        loader = dm.train_dataloader()
        counts = [sum(1 for _ in loader) for _ in range(2)]  # two epochs
        assert counts == [len(loader)] * 2
        lengths.append(len(loader))
    assert lengths == [6, 6]  # 5 rounded up to a multiple of 2 workers


def test_batches_follow_the_contract_and_match_the_renderer(shapes_dir):
    out, stats = shapes_dir
    dm = _module(None, val_urls=str(out / "val"))  # a folder works as a spec
    batches = list(dm.val_dataloader())
    batch = batches[0]
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.uint8  # pixels
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)  # a view of [B, S, S, 3]
    floats = next(iter(_module(None, val_urls=str(out / "val"), image_dtype="float32").val_dataloader()))["image"]
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
        dm = _module(urls, num_workers=workers, shuffle_buffer=0)
        with pytest.warns(UserWarning, match="does-not-exist") if workers == 0 else _no_check():
            batches = list(dm.train_dataloader())
        got = {k: c for b in batches for k, c in zip(b["key"], b["caption"])}
        assert got == good
        assert dm.stats() == expected


def _no_check():
    import contextlib

    return contextlib.nullcontext()


def test_latent_shards_read_back(tmp_path):
    rng = np.random.default_rng(0)
    floats = {f"{i:04d}": rng.standard_normal((16, 4)).astype(np.float16) for i in range(6)}
    stats = write_latent_shards(((k, v, f"caption {k}") for k, v in floats.items()), tmp_path / "f", shard_size=4)
    assert stats["written"] == 6 and len(stats["shards"]) == 2
    dm = _module(stats["urls"], kind="latents", batch_size=3, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    assert [b["latent"].shape for b in batches] == [(3, 16, 4), (3, 16, 4)]
    assert batches[0]["latent"].dtype == torch.float32
    for batch in batches:
        for key, latent, caption in zip(batch["key"], batch["latent"], batch["caption"]):
            assert caption == f"caption {key}"
            assert torch.equal(latent, torch.from_numpy(floats[key].astype(np.float32)))
    codes = [(f"{i:04d}", torch.randint(0, 8192, (16,)), "codes") for i in range(4)]
    stats = write_latent_shards(codes, tmp_path / "codes")
    batch = next(iter(_module(stats["urls"], kind="latents", batch_size=4, shuffle_buffer=0).train_dataloader()))
    assert batch["latent"].dtype == torch.long and batch["latent"].shape == (4, 16)
    assert torch.equal(batch["latent"], torch.stack([c for _, c, _ in codes]))


def test_expand_shard_urls(tmp_path):
    for name in ("a-000.tar", "a-001.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shard_urls(str(tmp_path / "a-{000..001}.tar")) == [str(tmp_path / "a-000.tar"),
                                                                     str(tmp_path / "a-001.tar")]
    assert expand_shard_urls(str(tmp_path / "a-*.tar")) == expand_shard_urls(str(tmp_path / "a-{000..001}.tar"))
    assert len(expand_shard_urls(str(tmp_path))) == 3
    assert expand_shard_urls(f"{tmp_path}/b.tar::pipe:cat {tmp_path}/b.tar") == [
        str(tmp_path / "b.tar"), f"pipe:cat {tmp_path}/b.tar"]


def test_pipe_urls_are_read(shapes_dir):
    _, stats = shapes_dir
    shard = stats["val"]["shards"][0]
    keys = _keys(_module(f"pipe:cat {shard}", shuffle_buffer=0).train_dataloader())
    assert len(keys) == 10


class _TinyModule(LightningModule):
    """Just enough of a model to drive the data through a Trainer."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        assert batch["image"].shape[1:] == (3, SIZE, SIZE) and len(batch["caption"]) == batch["image"].shape[0]
        assert batch["image"].dtype == torch.uint8
        return (self.weight - images_to_float(batch["image"]).mean()).pow(2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_with_stats_logger(shapes_dir, tmp_path):
    _, stats = shapes_dir
    dm = _module(stats["train"]["urls"], resampled=True, epoch_batches=3)
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[DataStatsLogger()])
    trainer.fit(_TinyModule(), datamodule=dm)
    assert trainer.global_step == 6
    assert trainer.callback_metrics["data/samples"].item() == 6 * 4
    assert trainer.callback_metrics["data/bad_image"].item() == 0


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
    trainer.fit(_TinyModule(), datamodule=dm, ckpt_path=ckpt_path)
    return record.keys


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-persistent-workers"])
@pytest.mark.parametrize("resampled", [False, True], ids=["one-pass", "resampled"])
def test_a_run_resumed_mid_epoch_goes_on_where_it_stopped(shapes_dir, tmp_path, resampled, workers):
    _, stats = shapes_dir

    def dm():  # persistent workers: the resume must reach the worker copies of the stream
        return _module(stats["train"]["urls"], num_workers=workers, persistent_workers=True, resampled=resampled,
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
    dm = _module([str(tmp_path / "nope" / "train")])
    with pytest.raises(FileNotFoundError, match="no such shards.*nope"):
        dm.setup("fit")


def test_only_broken_shards_fail_loudly_instead_of_spinning(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00" * 10 + b"not a tar")
    dm = _module([str(broken)], resampled=True, epoch_batches=2)
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="shard errors in a row"):
        next(iter(dm.train_dataloader()))
    assert dm.stats()["shard_errors"] == 101
