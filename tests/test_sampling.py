"""SamplingSettings: one object, validated where it is made, replaced field by field, seeded, and heard by the head."""

import pytest
import torch
from tiny import tiny_module

from fluid_lightning.sampling import SamplingSettings, generate_images


@pytest.mark.parametrize("bad,message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"cfg_schedule": "cubic"}, "cfg_schedule"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"detail_temperature": -0.5}, "detail_temperature must be >= 0"),
    ({"detail_fraction": 0.0}, "detail_fraction"),
    ({"detail_fraction": 1.5}, "detail_fraction"),
    ({"refine_passes": -1}, "refine_passes must be >= 0"),
    ({"refine_group": 0}, "refine_group must be at least 1"),
    ({"refine_temperature": -0.1}, "refine_temperature must be >= 0"),
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


@pytest.mark.parametrize("base,same,changed", [
    ({}, {"detail_temperature": 1.0}, {"detail_temperature": 0.0}),  # at the temperature itself: the plain sampler
    ({}, {"refine_passes": 0, "refine_group": 1}, {"refine_passes": 1}),
    ({}, {"refine_temperature": 0.0}, {"refine_passes": 1}),  # the passes' temperature needs passes
    ({"refine_passes": 1}, {"refine_temperature": None}, {"refine_temperature": 0.0}),
])
def test_the_detail_temperature_and_refinement_reach_the_generator(base, same, changed):
    module = tiny_module()
    prompts = ["a photo of a red circle", "a photo of two squares"]
    settings = SamplingSettings(steps=4, cfg=2.0, **base)

    def images(changes: dict) -> torch.Tensor:
        return generate_images(module.generator, module.tokenizer, module.text_encoder, prompts, settings.replace(**changes))

    plain = images({})
    assert torch.equal(images(same), plain)
    assert not torch.allclose(images(changed), plain)
