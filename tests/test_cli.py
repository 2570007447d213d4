"""The CLI as a user drives it: every shipped config parses, the tiny variants train, overrides
propagate through interpolations, bad input fails clearly, and checkpoints become images."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from fluid_lightning.checkpointing import safe_load
from fluid_lightning.cli import lightning_cli, main
from fluid_lightning.models.summary import generator_param_counts, load_generator_config
from fluid_lightning.pipeline import FluidPipeline

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = sorted(CONF.glob("model/tiny_*.yaml"))
SIZES = sorted(CONF.glob("model/fluid_*.yaml"))
BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]
GPU_ONLY = {CONF / "trainer/gpu.yaml"}


def config_args(*paths) -> list[str]:
    return [arg for p in paths for arg in ("--config", str(p))]


def test_every_config_is_covered_by_a_test():
    covered = set(TINY) | set(SIZES) | set(BASE) | GPU_ONLY | set(CONF.glob("experiment/*.yaml"))
    covered |= set(CONF.glob("tokenizer/*.yaml"))  # full configs, like experiment/
    assert set(CONF.rglob("*.yaml")) <= covered | set(CONF.glob("data/*.yaml")) | set(CONF.glob("trainer/*.yaml"))


@pytest.mark.parametrize("path", sorted(set(CONF.rglob("*.yaml")) - set(SIZES) - GPU_ONLY), ids=lambda p: p.stem)
def test_config_instantiates_through_the_cli(path, tmp_path):
    base = [b for b in BASE if b.parent != path.parent]
    model = [] if path.parent.name in ("model", "experiment", "tokenizer") else [CONF / "model/tiny_fluid.yaml"]
    args = [*config_args(*base, *model, path), "--trainer.default_root_dir", str(tmp_path)]
    cli = lightning_cli(args, run=False)
    assert cli.model is not None and cli.datamodule is not None


@pytest.mark.parametrize("path", sorted(SIZES) + sorted(GPU_ONLY), ids=lambda p: p.stem)
def test_large_and_gpu_configs_parse(path, capsys):
    # These need T5-XXL weights or a GPU to instantiate; the parser still checks every key and type.
    with pytest.raises(SystemExit) as exit_info:
        lightning_cli(["fit", *config_args(*BASE, path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("path", SIZES, ids=lambda p: p.stem)
def test_size_family_matches_its_nominal_size_on_meta(path):
    nominal = {"166m": 166e6, "369m": 369e6, "665m": 665e6, "1.1b": 1.1e9, "3.1b": 3.1e9, "10.5b": 10.5e9}
    total = generator_param_counts(load_generator_config(path))["total"]
    assert abs(total / nominal[path.stem.split("_")[1]] - 1) < 0.10


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_fast_dev_run_of_each_tiny_variant(path, tmp_path):
    main(["fit", *config_args(*BASE, path), "--trainer.fast_dev_run=true", "--trainer.default_root_dir", str(tmp_path)])


def test_quickstart_trains_evaluates_and_samples_as_the_readme_says(tmp_path, monkeypatch):
    """The README's main job, shortened to 2 steps, from another directory (the shipped VAE is found
    beside the package): checkpoint, sample grid and shapes scores at the end of fit, then `sample`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONF / "experiment/quickstart.yaml"), "--trainer.max_steps=2",
          "--trainer.enable_progress_bar=false"])
    ckpt = tmp_path / "runs/quickstart/checkpoints/last.ckpt"
    assert safe_load(ckpt)["global_step"] == 2
    logs = next((tmp_path / "runs/quickstart/lightning_logs").iterdir())
    assert Image.open(logs / "samples/samples_step0000002.png").size == (3 * 64, 2 * 64)  # 6 prompts
    events = EventAccumulator(str(logs))
    events.Reload()
    assert "shapes/overall" in events.Tags()["scalars"]  # (train/loss is logged every 25 steps)

    main(["sample", "--ckpt", str(ckpt), "--prompt", "a photo of a red circle", "--per-prompt", "2", "--steps", "4",
          "--out", "samples"])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["0000.png", "0001.png", "grid.png", "prompts.txt"]
    assert Image.open(tmp_path / "samples/0000.png").size == (64, 64)


def test_override_propagates_through_interpolations(tmp_path):
    cli = lightning_cli(
        [*config_args(*BASE, CONF / "model/tiny_fluid.yaml"), "--data.init_args.image_size=48",
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
    ],
)
def test_bad_config_values_fail_with_a_message_naming_the_key(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lightning_cli(["fit", *config_args(*BASE, CONF / "model/tiny_fluid.yaml"), override])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_mismatched_tokenizer_and_generator_names_the_fix():
    with pytest.raises(ValueError, match="set model.init_args.generator.init_args.grid_size: 8"):
        lightning_cli(
            [*config_args(*BASE, CONF / "model/tiny_fluid.yaml"), "--model.init_args.generator.init_args.grid_size=5"],
            run=False,
        )


def test_checkpoint_to_pipeline_to_images_round_trip(tmp_path):
    cli = lightning_cli(
        ["fit", *config_args(*BASE, CONF / "model/tiny_raster_discrete.yaml"), "--trainer.max_steps=2",
         "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4", "--trainer.default_root_dir", str(tmp_path)],
    )
    ckpt = next(tmp_path.rglob("last.ckpt"))
    prompts = ["a photo of a red circle", "a photo of two squares"]
    expected = cli.model.pipeline().generate(prompts, cfg=2.0, seed=7)
    pipe = FluidPipeline.from_checkpoint(ckpt)
    torch.testing.assert_close(pipe.generate(prompts, cfg=2.0, seed=7), expected, rtol=0, atol=0)
    # The pipeline samples with the EMA weights, which the checkpoint carries.
    assert not torch.equal(pipe.generator.embed.weight, cli.model.generator.embed.weight)
    torch.testing.assert_close(pipe.generator.embed.weight, cli.model.ema.embed.weight, rtol=0, atol=0)
    images = pipe(prompts, seed=1)
    assert [im.size for im in images] == [(32, 32), (32, 32)]

    out = tmp_path / "samples"
    main(["sample", "--ckpt", str(ckpt), "--prompt", prompts[0], "--prompt", prompts[1], "--per-prompt", "2",
          "--out", str(out), "--cfg", "2", "--seed", "3", "--no-kv-cache"])
    pngs = sorted(out.glob("0*.png"))
    assert len(pngs) == 4 and Image.open(out / "grid.png").size == (64, 64)
    again = tmp_path / "again"
    main(["sample", "--ckpt", str(ckpt), "--prompt", prompts[0], "--prompt", prompts[1], "--per-prompt", "2",
          "--out", str(again), "--cfg", "2", "--seed", "3"])
    assert (again / "grid.png").read_bytes() == (out / "grid.png").read_bytes()  # KV cache or not, same images


def test_bad_input_to_a_command_gets_one_line_naming_the_problem(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit, match="fluid_lightning sample: error: no checkpoint"):
        main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="fluid_lightning data: error: --from .*nope: no such folder"):
        main(["data", "shards", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "shards")])
    with pytest.raises(SystemExit) as exit_info:  # argparse: a usage line and code 2, before any model loads
        main(["sample", "--ckpt", "x.ckpt", "--prompt", "x", "--out", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown command 'smaple'; choose from fit, .*sample"):
        main(["smaple"])
    monkeypatch.setenv("FLUID_LIGHTNING_TRACEBACK", "1")  # the exception itself, for debugging
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--out", str(tmp_path)])


def test_more_bad_input_is_named_before_any_work(tmp_path, monkeypatch):
    from fluid_lightning.evaluation.commands import read_captions
    from fluid_lightning.pipeline import default_device

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA GPU here"):
            default_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        default_device("gpu")
    (tmp_path / "caps.jsonl").write_text("a red circle\n")
    with pytest.raises(ValueError, match="caps.jsonl:1: not a JSON object"):
        read_captions(str(tmp_path / "caps.jsonl"))
    (tmp_path / "pairs.jsonl").write_text('{"img": "a.png", "text": "x"}\n')
    with pytest.raises(SystemExit, match='pairs.jsonl:1: no "image" key'):
        main(["data", "shards", "--from", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "shards")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no tokenizer at my_kll"):
        main(["tokenizer", "stats", "--tokenizer", "my_kll", "--shapes", "4"])


def test_top_level_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "sample", "params", "data", "evaluate", "checkpoint", "tokenizer"):
        assert f"fluid_lightning {command} " in out, command
    assert "validate, test, predict" in out


def test_predict_writes_images_for_the_validation_captions(tmp_path):
    fit_dir, out = tmp_path / "fit", tmp_path / "predict"
    common = [*config_args(*BASE, CONF / "model/tiny_maskgit.yaml"), "--data.init_args.batch_size=3",
              "--model.init_args.sample_steps=4"]
    main(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--trainer.default_root_dir", str(fit_dir)])
    ckpt = next(fit_dir.rglob("last.ckpt"))
    main(["predict", *common, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches=2",
          "--trainer.default_root_dir", str(tmp_path / "p"),
          "--trainer.callbacks+=fluid_lightning.callbacks.image_writer.ImageWriter",
          f"--trainer.callbacks.out_dir={out}"])
    assert len(list(out.glob("0_*.png"))) == 6
    assert len((out / "captions_rank0.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("command,metric", [("validate", "val/loss"), ("test", "test/loss")])
def test_validate_and_test_report_their_loss(command, metric, tmp_path):
    cli = lightning_cli(
        [command, *config_args(*BASE, CONF / "model/tiny_maskgit.yaml"), "--trainer.limit_val_batches=1",
         "--trainer.limit_test_batches=1", "--data.init_args.batch_size=2", "--trainer.default_root_dir", str(tmp_path)]
    )
    assert torch.isfinite(cli.trainer.callback_metrics[metric])
