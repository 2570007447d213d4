"""benchmarks/bench_samplers.py's settings: a sampler head and SamplingSettings fields, with ``none`` unsetting one."""

import importlib.util

import pytest
from tiny import ROOT

from fluid_lightning.sampling import SamplingSettings

SPEC = importlib.util.spec_from_file_location("bench_samplers", ROOT / "benchmarks/bench_samplers.py")
bench_samplers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench_samplers)


def test_a_setting_names_the_sampler_and_fields_and_none_unsets_an_optional_one():
    setting = bench_samplers.parse_setting("ddpm:50:16,refine_passes=2,refine_temperature=none,cfg=4")
    assert setting == {"diffusion_sampler": "ddpm", "diffusion_steps": 50, "steps": 16, "refine_passes": 2,
                       "refine_temperature": None, "cfg": 4.0}
    checkpoint_own = SamplingSettings(refine_passes=2, refine_temperature=0.25)
    assert checkpoint_own.replace(**setting).refine_temperature is None
    with pytest.raises(SystemExit, match="unknown setting field 'temprature'"):
        bench_samplers.parse_setting("ddpm:50:16,temprature=0.5")
