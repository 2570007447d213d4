"""Consolidation: a training checkpoint becomes one safetensors file holding the module's weights (the EMA
copy included, the optimiser state left out) and its config as metadata, which ``checkpointing.load``
rebuilds into the same module; a wrong output name, a checkpoint without a config and a safetensors file
without one are each named. Sharded (FSDP2) folders: test_strategy.py and tests/test_parallel.py."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import CONF

from fluid_lightning.checkpointing import consolidate, load, read_consolidated
from fluid_lightning.config import load_config
from fluid_lightning.lit.generator_module import GeneratorModule


def test_a_checkpoint_becomes_its_weights_and_config_without_the_optimiser_and_loads_back(tmp_path):
    config = load_config(CONF / "data/shapes.yaml", CONF / "model/tiny_maskgit.yaml")["model"]["init_args"]
    module = GeneratorModule.from_config(config)
    state = module.state_dict()
    optimizer = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams), "global_step": 7,
                "optimizer_states": [optimizer]}, tmp_path / "last.ckpt")

    out = consolidate(tmp_path / "last.ckpt", tmp_path / "model.safetensors")
    saved_config, weights = read_consolidated(out)
    assert saved_config == {k: v for k, v in module.hparams.items() if not k.startswith("_")}
    assert set(weights) == set(state) and any(k.startswith("ema.") for k in weights)
    assert all(torch.equal(weights[k], v) for k, v in state.items())
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["global_step"] == "7"
    loaded = load(GeneratorModule, out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_what_cannot_be_consolidated_or_read_back_is_named(tmp_path):
    bare, out = tmp_path / "bare.ckpt", tmp_path / "model.safetensors"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"_instantiator": "x"}}, bare)
    with pytest.raises(ValueError, match=r"the consolidated file is safetensors; name it \*\.safetensors"):
        consolidate(bare, tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="has no hyper_parameters: it was not written by a config-built module"):
        consolidate(bare, out)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        consolidate(tmp_path / "absent.ckpt", out)
    assert not out.exists()
    save_file({"w": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no 'fluid_lightning.config' metadata; write it with `fluid_lightning checkpoint"):
        read_consolidated(tmp_path / "plain.safetensors")
