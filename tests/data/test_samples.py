"""Shard lists and the shuffle buffer samples.py gives WebDataModule: a shard spec (braces, globs, a
folder, ``::`` joins, ``pipe:`` commands) expands to the shards it names, and the buffer yields every
sample once, in an order its seed repeats. Its skip-and-count decoders in a real loader: test_webdata.py
(test_bad_samples_are_skipped_and_counted_exactly, test_only_broken_shards_fail_loudly_instead_of_spinning)."""

from __future__ import annotations

import random

from fluid_lightning.data.samples import expand_shard_urls, shuffled


def test_expand_shard_urls(tmp_path):
    for name in ("a-000.tar", "a-001.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shard_urls(str(tmp_path / "a-{000..001}.tar")) == [str(tmp_path / "a-000.tar"),
                                                                     str(tmp_path / "a-001.tar")]
    assert expand_shard_urls(str(tmp_path / "a-*.tar")) == expand_shard_urls(str(tmp_path / "a-{000..001}.tar"))
    assert len(expand_shard_urls(str(tmp_path))) == 3
    assert expand_shard_urls(f"{tmp_path}/b.tar::pipe:cat {tmp_path}/b.tar") == [
        str(tmp_path / "b.tar"), f"pipe:cat {tmp_path}/b.tar"]


def test_the_shuffle_buffer_yields_every_sample_once_in_an_order_its_seed_repeats():
    samples = list(range(100))
    order = list(shuffled(iter(samples), random.Random(0), size=16))
    assert sorted(order) == samples and order != samples
    assert list(shuffled(iter(samples), random.Random(0), size=16)) == order
    assert list(shuffled(iter(samples), random.Random(1), size=16)) != order
    # a sample comes out no earlier than 16 places before it went in: the buffer holds 16, not the stream
    assert all(position >= sample - 16 for position, sample in enumerate(order))
    assert sorted(shuffled(iter(samples[:5]), random.Random(0), size=16)) == samples[:5]  # a short stream, flushed
