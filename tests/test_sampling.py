"""SamplingSettings: one object, validated where it is made, replaced field by field, seeded."""

import pytest
import torch

from fluid_lightning.sampling import SamplingSettings


@pytest.mark.parametrize("bad,message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"cfg_schedule": "cubic"}, "cfg_schedule"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
])
def test_bad_settings_are_named_where_they_are_made(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**bad)
    with pytest.raises(ValueError, match=message):
        SamplingSettings().replace(**bad)


def test_replace_changes_only_the_given_fields_and_the_seed_makes_the_stream():
    base = SamplingSettings(steps=8, cfg=2.0)
    changed = base.replace(temperature=0.5)
    assert (changed.steps, changed.cfg, changed.temperature) == (8, 2.0, 0.5) and base.temperature == 1.0
    assert torch.equal(torch.rand(3, generator=base.rng("cpu")), torch.rand(3, generator=base.rng("cpu")))
    assert base.replace(seed=None).rng("cpu") is None  # the global stream
