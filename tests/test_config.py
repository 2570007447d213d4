"""YAML configs outside the CLI (the `params` command, notebooks, tools): merged with later files winning
and ``${...}`` interpolations resolved with the CLI's arithmetic, so the generator entry is the one the
CLI builds; a bare generator entry gets FluidGenerator's class path; a config missing the key an
interpolation needs, or the generator entry, is named."""

from __future__ import annotations

import pytest
from tiny import CONF

from fluid_lightning.cli import lightning_cli
from fluid_lightning.config import FLUID_GENERATOR, load_config, load_generator_config

BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]
TINY_MODEL = CONF / "model/tiny_fluid.yaml"


def test_the_generator_entry_is_the_one_the_cli_builds_with_later_files_winning(tmp_path):
    larger = tmp_path / "larger.yaml"
    larger.write_text("data:\n  init_args:\n    image_size: 48\n"
                      "model:\n  init_args:\n    tokenizer:\n      init_args:\n        patch_size: 8\n")
    generator = load_generator_config(larger, [*BASE, TINY_MODEL])
    args = generator["init_args"]
    assert generator["class_path"] == FLUID_GENERATOR
    assert (args["grid_size"], args["token_dim"], args["text_dim"]) == (6, 8 * 8 * 3, 64)  # floordiv, mul, a key
    built = lightning_cli(["--config", str(BASE[0]), "--config", str(BASE[1]), "--config", str(TINY_MODEL),
                           "--config", str(larger), "--trainer.default_root_dir", str(tmp_path)], run=False).model
    assert (built.generator.grid_size, built.generator.token_dim) == (args["grid_size"], args["token_dim"])
    assert load_config(*BASE, TINY_MODEL, larger)["data"]["init_args"]["num_train"] == 20000  # merged, not replaced


def test_a_bare_generator_entry_is_a_fluid_generator_and_what_is_missing_is_named(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  init_args:\n    generator: {width: 64, depth: 2}\n")
    assert load_generator_config(bare) == {"class_path": FLUID_GENERATOR, "init_args": {"width": 64, "depth": 2}}
    size = CONF / "model/size/166m.yaml"  # an overlay's own entry: init_args without a class_path
    assert load_generator_config(size)["init_args"] == load_config(size)["model"]["init_args"]["generator"]["init_args"]
    with pytest.raises(ValueError, match=r"tiny_fluid.yaml: .*compose it with the config that defines the key"):
        load_generator_config(TINY_MODEL)  # its interpolations need data.init_args.image_size
    with pytest.raises(ValueError, match="has no model.init_args.generator entry"):
        load_generator_config(CONF / "data/shapes.yaml")
