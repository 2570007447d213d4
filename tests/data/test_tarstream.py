"""The tar member reader gives what webdataset's `tarfile`-based reader gives: the same samples, from
every tar format, compressed or not, and the same samples and failures on damaged shards."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile

import pytest
import webdataset as wds

from fluid_lightning.data.shards import ShardSink
from fluid_lightning.data.tarstream import tar_members, tarfile_samples

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


def _tar(fmt: int, rng: random.Random, n: int = 5, duplicate: bool = False) -> bytes:
    buffer = io.BytesIO()
    long = fmt != tarfile.USTAR_FORMAT  # ustar cannot store a 120-character name
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for i in range(n):
            stem = {2: f"dir/sub{i}", 3: "k" * (120 if long else 60) + str(i), 4: f"ké{i}"}.get(i, f"key{i}")
            for ext in ["jpg", "txt", "JSON"] + (["jpg"] if duplicate and i == 1 else []):
                data = rng.randbytes(rng.randrange(0, 1500))
                info = tarfile.TarInfo(f"{stem}.{ext}")
                info.size, info.mtime = len(data), (1.5 if i == 1 else 7)  # a float mtime makes a pax header
                tar.addfile(info, io.BytesIO(data))
            if i == 1:
                for name, kind in (("a-folder", tarfile.DIRTYPE), ("link.jpg", tarfile.SYMTYPE)):
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname = kind, "key0.jpg"
                    tar.addfile(info)
                meta = tarfile.TarInfo("__meta__")
                meta.size = 3
                tar.addfile(meta, io.BytesIO(b"abc"))
    return buffer.getvalue()


def _read_both(blobs: list[bytes]) -> tuple[tuple[list[dict], bool], tuple[list[dict], bool]]:
    """(samples, any error) from webdataset's reader and from ours, for shards with these bytes."""
    results = []
    for ours in (False, True):
        errors = []

        def handler(exn, errors=errors):
            errors.append(exn)
            return True

        sources = [{"url": f"shard{i}", "stream": io.BytesIO(b)} for i, b in enumerate(blobs)]
        if ours:
            from fluid_lightning.data.tarstream import _samples

            samples = list(_samples(sources, handler))
        else:
            files = wds.tariterators.tar_file_expander(sources, handler=handler)
            samples = list(wds.tariterators.group_by_keys(files, handler=handler))
        results.append((samples, bool(errors)))
    return results[0], results[1]


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_every_format_and_compression_reads_as_with_tarfile(fmt):
    rng = random.Random(fmt)
    plain = _tar(fmt, rng)
    for blob in (plain, gzip.compress(plain), bz2.compress(plain), lzma.compress(plain)):
        theirs, ours = _read_both([blob])
        assert ours == theirs and not ours[1]
    samples = theirs[0]
    assert [s["__key__"] for s in samples][:3] == ["key0", "key1", "dir/sub2"]
    assert all(set(s) == {"__key__", "__url__", "jpg", "txt", "json"} for s in samples)  # ext lower-cased
    names = [name for name, _ in tar_members(io.BytesIO(plain))]
    assert "__meta__" not in names and "a-folder" not in names and "link.jpg" not in names


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_damaged_shards_give_the_same_samples_and_errors_as_with_tarfile(fmt):
    rng = random.Random(fmt + 10)
    plain = _tar(fmt, rng)
    damaged = [b"", b"\0" * 10 + b"not a tar", b"\0" * 1024]
    damaged += [plain[:cut] for cut in range(0, len(plain), 97)]  # cut short anywhere
    for _ in range(150):  # one or two bytes changed anywhere (headers, pax records, data)
        blob = bytearray(plain)
        blob[rng.randrange(len(blob))] = rng.randrange(256)
        if rng.random() < 0.5:
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(blob))
    for blob in damaged:
        theirs, ours = _read_both([blob])
        assert ours == theirs, len(blob)


def test_several_shards_with_broken_ones_and_duplicates_read_as_with_tarfile():
    rng = random.Random(3)
    for _ in range(200):
        blobs = []
        for _ in range(rng.randrange(1, 4)):
            blob = _tar(rng.choice([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]), rng, n=3, duplicate=rng.random() < 0.3)
            if rng.random() < 0.4:  # a broken shard leaves its last sample open, as in webdataset
                blob = blob[: rng.randrange(len(blob))]
            blobs.append(blob)
        theirs, ours = _read_both(blobs)
        assert ours == theirs


def test_shards_written_by_webdataset_and_urls_read_back(tmp_path):
    with ShardSink(tmp_path, shard_size=3) as sink:
        for i in range(7):
            sink.write(f"{i:04d}", {"jpg": bytes([i]) * 700, "txt": f"caption {i}"})
    sources = [{"url": url} for url in sink.shards] + [{"url": f"pipe:cat {sink.shards[0]}"}]
    samples = list(tarfile_samples(sources))
    assert [s["__key__"] for s in samples] == [f"{i:04d}" for i in range(7)] + ["0000", "0001", "0002"]
    assert samples[5]["jpg"] == bytes([5]) * 700 and samples[5]["txt"] == b"caption 5"
    assert samples[-1]["__url__"] == f"pipe:cat {sink.shards[0]}"
    with pytest.raises(FileNotFoundError):
        list(tarfile_samples([{"url": str(tmp_path / "missing.tar")}]))
