"""Every shipped YAML through the real CLI (so configs cannot rot), the size family's measured sizes,
interpolations that follow overrides, default callbacks that survive added ones, and the sampling
settings from YAML and the command line."""

from pathlib import Path

import pytest
import torch
from tiny import CONF

from fluid_lightning.callbacks import (
    ImageGrid,
    NonFiniteLossGuard,
    PreemptionCheckpoint,
    ShapesEvalCallback,
    Throughput,
)
from fluid_lightning.cli import lightning_cli
from fluid_lightning.config import load_generator_config
from fluid_lightning.data.shapes import caption_for, evaluation_suite
from fluid_lightning.models.summary import generator_param_counts
from fluid_lightning.sampling import SamplingSettings

BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]
TINY_MODEL = CONF / "model/tiny_fluid.yaml"
FLUID = CONF / "model/fluid.yaml"


def config_args(*paths) -> list[str]:
    return [arg for p in paths for arg in ("--config", str(p))]


def composition(path: Path) -> tuple[list[Path], bool]:
    """(the configs `path` is used with, whether it can be built on this machine). Full configs
    (experiment/, tokenizer/) stand alone; pieces are composed as the README composes them; the
    paper-scale model needs T5-XXL weights and gpu.yaml a GPU, so those are parsed, not built."""
    folder = path.parent.relative_to(CONF).as_posix()
    if folder in ("experiment", "tokenizer"):
        return [path], True
    if folder == "experiment/study":  # overlays on the quickstart, composed as benchmarks/study.py composes them
        pieces = [CONF / "experiment/quickstart.yaml", CONF / "experiment/study/common.yaml"]
        if path.stem.startswith("size_"):
            pieces.append(CONF / "experiment/study/fluid.yaml")
        return [*dict.fromkeys([*pieces, path])], True
    if folder == "experiment/ladder":  # rungs: overlays on the quickstart, as the README composes them
        return [CONF / "experiment/quickstart.yaml", path], True
    if folder == "trainer":
        return [path, CONF / "data/shapes.yaml", TINY_MODEL], path.stem != "gpu"
    if folder == "data":
        return [CONF / "trainer/cpu.yaml", path, TINY_MODEL], True
    if folder == "model":
        return [*BASE, path], path != FLUID
    if folder == "model/size":
        return [*BASE, FLUID, path], False
    raise AssertionError(f"{path}: a config folder no test knows how to compose; add it to composition()")


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_every_shipped_config_parses_and_builds_where_it_can(path, tmp_path, capsys):
    configs, buildable = composition(path)
    args = [*config_args(*configs), "--trainer.default_root_dir", str(tmp_path)]
    if buildable:
        cli = lightning_cli(args, run=False)
        assert cli.model is not None and cli.datamodule is not None
        return
    with pytest.raises(SystemExit) as exit_info:  # the parser still checks every key and type
        lightning_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted(CONF.glob("model/size/*.yaml")), ids=lambda p: p.stem)
def test_size_family_matches_its_nominal_size_on_meta(path):
    nominal = {"166m": 166e6, "369m": 369e6, "665m": 665e6, "1.1b": 1.1e9, "3.1b": 3.1e9, "10.5b": 10.5e9}
    total = generator_param_counts(load_generator_config(path, [FLUID]))["total"]
    assert abs(total / nominal[path.stem] - 1) < 0.10


@pytest.mark.parametrize("path", sorted(CONF.glob("model/tiny_*.yaml")), ids=lambda p: p.stem)
def test_each_tiny_variant_trains_a_step(path, tmp_path):
    cli = lightning_cli([*config_args(*BASE, path), "--trainer.fast_dev_run=true",
                         "--trainer.default_root_dir", str(tmp_path), "--data.init_args.image_size=64"
                         if "kl" in path.stem else "--data.init_args.batch_size=8"], run=False)
    before = {k: v.clone() for k, v in cli.model.generator.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[k], v) for k, v in cli.model.generator.state_dict().items())


def test_override_propagates_through_interpolations():
    cli = lightning_cli(
        [*config_args(*BASE, TINY_MODEL), "--data.init_args.image_size=48",
         "--model.init_args.tokenizer.init_args.patch_size=8"],
        run=False,
    )
    assert cli.model.tokenizer.image_size == 48
    assert cli.model.generator.grid_size == 6 and cli.model.generator.token_dim == 8 * 8 * 3


@pytest.mark.parametrize(
    "override,message",
    [
        ("--model.init_args.generator.init_args.widht=3", "widht"),
        ("--model.init_args.generator.init_args.depth=two", "depth"),
        ("--model.init_args.generator.init_args.order=spiral", "order"),
        ("--model.init_args.sampling.stpes=3", "stpes"),
    ],
)
def test_bad_config_values_fail_with_a_message_naming_the_key(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lightning_cli(["fit", *config_args(*BASE, TINY_MODEL), override])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_mismatched_tokenizer_and_generator_names_the_fix():
    with pytest.raises(ValueError, match="set model.init_args.generator.init_args.grid_size: 8"):
        lightning_cli([*config_args(*BASE, TINY_MODEL), "--model.init_args.generator.init_args.grid_size=5"], run=False)


def test_default_callbacks_survive_added_ones_from_yaml_and_the_command_line(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: fluid_lightning.callbacks.Throughput\n")
    cli = lightning_cli([*config_args(CONF / "experiment/quickstart.yaml", extra),
                         "--trainer.callbacks+=fluid_lightning.callbacks.ImageGrid",
                         "--trainer.callbacks.prompts=[a photo of a red circle]",
                         "--checkpoint.every_n_train_steps=7", "--nonfinite_guard.max_in_a_row=3",
                         "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    callbacks = cli.trainer.callbacks
    kinds = [type(c) for c in callbacks]
    # extra.yaml's list replaced the quickstart's (a later list replaces an earlier one); the defaults stay
    assert Throughput in kinds and ImageGrid in kinds and NonFiniteLossGuard in kinds and PreemptionCheckpoint in kinds
    assert cli.trainer.checkpoint_callback._every_n_train_steps == 7
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "run" / "checkpoints"
    assert next(c for c in callbacks if isinstance(c, NonFiniteLossGuard)).max_in_a_row == 3
    assert any(type(p).__name__ == "AtomicCheckpointIO" for p in [cli.trainer.strategy.checkpoint_io])


@pytest.mark.parametrize("rung,tags", [("single", {"single_object", "colors"}),
                                       ("two", {"single_object", "colors", "two_object", "counting"})])
def test_a_ladder_rung_trains_and_scores_only_its_tags_in_its_own_folder(rung, tags, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(config_args(CONF / "experiment/quickstart.yaml", CONF / f"experiment/ladder/{rung}.yaml"),
                        run=False)
    cli.datamodule.setup("fit")
    seen = {cli.datamodule.train_set[i]["caption"] for i in range(64)}
    assert set(cli.datamodule.tags) == tags and len(seen) > 5
    scorer = next(c for c in cli.trainer.callbacks if isinstance(c, ShapesEvalCallback))
    scorer.setup(cli.trainer, cli.model, "fit")
    assert {r["tag"] for r in scorer.records} == tags
    assert Path(cli.trainer.default_root_dir) == Path(f"runs/ladder/{rung}")
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / f"runs/ladder/{rung}/checkpoints"


def test_the_quickstart_words_cover_every_caption_and_suite_prompt(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli = lightning_cli(config_args(CONF / "experiment/quickstart.yaml"), run=False)
    cli.datamodule.setup("fit")
    captions = [cli.datamodule.train_set[i]["caption"] for i in range(500)]
    captions += [caption_for(spec) for spec in evaluation_suite(min_per_tag=48)]
    tokenizer = cli.model.text_encoder.tokenizer
    ids = {i for caption in captions for i in tokenizer(caption)["input_ids"]}
    assert tokenizer.unk_token_id not in ids


def test_sampling_settings_round_trip_through_yaml_and_the_command_line(tmp_path):
    yaml = tmp_path / "sampling.yaml"
    yaml.write_text("model:\n  init_args:\n    sampling: {steps: 12, cfg: 4.5, cfg_schedule: constant}\n")
    cli = lightning_cli([*config_args(*BASE, TINY_MODEL, yaml), "--model.init_args.sampling.temperature=0.7",
                         "--trainer.default_root_dir", str(tmp_path)], run=False)
    expected = SamplingSettings(steps=12, cfg=4.5, cfg_schedule="constant", temperature=0.7)
    assert cli.model.sampling == expected
    assert SamplingSettings(**cli.model.hparams["sampling"]) == expected  # saved as plain data
    with pytest.raises(SystemExit):
        lightning_cli([*config_args(*BASE, TINY_MODEL), "--model.init_args.sampling.cfg_schedule=cubic"], run=False)
