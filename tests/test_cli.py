"""The command line as a user drives it: the README's quickstart end to end (shortened), `predict`,
`validate` and `test`, `--help`, and one-line errors for bad input."""

import re

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import CONF

from fluid_lightning.checkpointing import safe_load
from fluid_lightning.cli import lightning_cli, main
from fluid_lightning.commands.common import resolve_device
from fluid_lightning.commands.evaluate import read_captions

BASE = [CONF / "trainer/cpu.yaml", CONF / "data/shapes.yaml"]


def config_args(*paths) -> list[str]:
    return [arg for p in paths for arg in ("--config", str(p))]


def test_quickstart_trains_evaluates_and_samples_as_the_readme_says(tmp_path, monkeypatch):
    """The README's main job, shortened to 2 steps, from another directory (the shipped VAE is found
    beside the package): checkpoint, sample grid and shapes scores at the end of fit, then `sample`."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONF / "experiment/quickstart.yaml"), "--trainer.max_steps=2",
          "--trainer.enable_progress_bar=false"])
    ckpt = tmp_path / "runs/quickstart/checkpoints/last.ckpt"
    assert safe_load(ckpt)["global_step"] == 2
    logs = next((tmp_path / "runs/quickstart/lightning_logs").iterdir())
    width, height = Image.open(logs / "samples/samples_step0000002.png").size
    assert width == 3 * 64 * 4 and height > 2 * 64 * 4  # 6 prompts of 64 px, enlarged 4x, captioned
    events = EventAccumulator(str(logs))
    events.Reload()
    scalars = events.Tags()["scalars"]  # (train/loss is logged every 25 steps)
    # the first cards: no empty hp_metric, no bare epoch; hp_metric is the final shapes score (HPARAMS tab)
    assert "epoch" not in scalars and [e.value for e in events.Scalars("hp_metric")] == [
        events.Scalars("shapes/overall")[-1].value]

    main(["sample", "--ckpt", str(ckpt), "--prompt", "a photo of a red circle", "--per-prompt", "2", "--steps", "4",
          "--out", "samples"])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["0000.png", "0001.png", "grid.png", "prompts.txt"]
    assert Image.open(tmp_path / "samples/0000.png").size == (64, 64)


def test_predict_writes_images_for_the_validation_captions(tmp_path):
    fit_dir, out = tmp_path / "fit", tmp_path / "predict"
    common = [*config_args(*BASE, CONF / "model/tiny_maskgit.yaml"), "--data.init_args.batch_size=3",
              "--model.init_args.sampling.steps=4"]
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
    # every generator run measures how much it reads its caption (the default caption_use callback)
    assert ("caption/shuffle_gap" in cli.trainer.callback_metrics) == (command == "validate")
    assert "caption/spread" in cli.trainer.callback_metrics or command == "test"


def test_top_level_help_lists_every_command_with_what_it_does(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "sample", "params", "data", "evaluate", "checkpoint",
                    "tokenizer"):
        assert re.search(rf"^  {command} +\w", out, re.MULTILINE), command


def test_bad_input_to_a_command_gets_one_line_naming_the_problem(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit, match="fluid_lightning sample: error: no checkpoint"):
        main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="fluid_lightning data: error: --from .*nope: no such folder"):
        main(["data", "shards", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "shards")])
    with pytest.raises(SystemExit) as exit_info:  # argparse: a usage line and code 2, before any model loads
        main(["sample", "--ckpt", "x.ckpt", "--prompt", "x", "--out", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="fluid_lightning evaluate: error: .*holds no prompt records"):
        (tmp_path / "empty.jsonl").write_text("")
        main(["evaluate", "generate", "--ckpt", "x.ckpt", "--metadata", str(tmp_path / "empty.jsonl"), "--out", "o"])
    with pytest.raises(SystemExit, match="unknown command 'smaple'; choose from fit, .*sample"):
        main(["smaple"])
    monkeypatch.setenv("FLUID_LIGHTNING_TRACEBACK", "1")  # the exception itself, for debugging
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["sample", "--ckpt", str(tmp_path / "nope.ckpt"), "--prompt", "x", "--out", str(tmp_path)])


def test_more_bad_input_is_named_before_any_work(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA GPU here"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu")
    (tmp_path / "caps.jsonl").write_text("a red circle\n")
    with pytest.raises(ValueError, match="caps.jsonl:1: not a JSON object"):
        read_captions(str(tmp_path / "caps.jsonl"))
    (tmp_path / "pairs.jsonl").write_text('{"img": "a.png", "text": "x"}\n')
    with pytest.raises(SystemExit, match='pairs.jsonl:1: no "image" key'):
        main(["data", "shards", "--from", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "shards")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no tokenizer at my_kll"):
        main(["tokenizer", "stats", "--tokenizer", "my_kll", "--shapes", "4"])


def test_a_second_run_into_a_folder_of_checkpoints_is_refused_and_a_damaged_last_names_the_good_one(tmp_path):
    tiny = [*config_args(*BASE, CONF / "model/tiny_fluid.yaml"), "--trainer.max_steps=1",
            "--trainer.default_root_dir", str(tmp_path)]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    good = folder / "epoch=0-step=2.ckpt"
    torch.save({"global_step": 2, "state_dict": {}}, good)
    (folder / "last.ckpt").write_bytes(good.read_bytes()[:200])  # truncated while being copied
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(SystemExit, match=f"fluid_lightning fit: error: {folder} already holds checkpoints of an "
                                         r"earlier run \(epoch=0-step=2.ckpt, last.ckpt\).*--ckpt_path last"):
        main(["fit", *tiny])
    with pytest.raises(SystemExit, match=f"{folder / 'last.ckpt'} is not a PyTorch checkpoint.*the newest readable "
                                         f"checkpoint beside it is {good}$"):
        main(["fit", *tiny, "--ckpt_path", "last"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing was overwritten
