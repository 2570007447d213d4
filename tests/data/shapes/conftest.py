"""The rendered scenes that test_world.py and test_render.py both check, drawn once per session."""

from __future__ import annotations

import pytest

from fluid_lightning.data.shapes import render_scene, scene_spec_for_index

N_SCENES = 240  # 40 per tag on average; rendering + pixel matching ≈ 5 ms each


@pytest.fixture(scope="session")
def scenes():
    return [render_scene(scene_spec_for_index(0, i), 64) for i in range(N_SCENES)]
