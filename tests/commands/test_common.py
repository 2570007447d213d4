"""Options several commands share: the sampling flags change only the settings given on the command line
(a flag left out keeps the checkpoint's own value, and 0 is a value), every SamplingSettings field has
its flag, counts below 1 are refused by argparse, and ``--device`` defaults to what this machine has."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from fluid_lightning.commands.common import add_sampling_arguments, resolve_device, sampling_from_arguments
from fluid_lightning.sampling import SamplingSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluid_lightning sample")
    add_sampling_arguments(parser)
    return parser


def test_sampling_flags_replace_only_what_is_given_and_zero_is_a_value():
    saved = SamplingSettings(steps=12, cfg=4.5, temperature=0.7, seed=3, diffusion_steps=20)
    assert sampling_from_arguments(saved, _parser().parse_args([])) == saved
    given = _parser().parse_args(["--steps", "4", "--temperature", "0", "--seed", "0", "--no-kv-cache",
                                  "--diffusion-sampler", "ddim"])
    assert sampling_from_arguments(saved, given) == saved.replace(steps=4, temperature=0.0, seed=0, kv_cache=False,
                                                                  diffusion_sampler="ddim")
    assert {f.name for f in dataclasses.fields(SamplingSettings)} <= set(vars(_parser().parse_args([])))


@pytest.mark.parametrize("flag", ["--steps", "--top-k", "--diffusion-steps"])
def test_a_count_below_one_is_refused_by_argparse(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([flag, "0"])
    assert exit_info.value.code == 2 and f"{flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_the_default_device_is_cuda_where_there_is_one_and_a_given_one_is_kept():
    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
