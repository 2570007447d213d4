"""benchmarks/learning_curve.py on a 4-step run of the ladder's first rung: a row per step checkpoint with the
rung's tags, caption numbers and a loss; the plot; a consolidated step checkpoint (what benchmarks/gpu_curve.sh
brings back) scores as the fit's own; a rerun reuses the scores it kept."""

import importlib.util
import json
import math
import sys

from tiny import CONF, ROOT

from fluid_lightning.checkpointing import consolidate
from fluid_lightning.cli import main as cli_main

sys.path.insert(0, str(ROOT / "benchmarks"))  # learning_curve imports study's validation loss
SPEC = importlib.util.spec_from_file_location("learning_curve", ROOT / "benchmarks/learning_curve.py")
learning_curve = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(learning_curve)


def test_every_step_checkpoint_gets_scores_caption_numbers_and_a_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "rung"
    cli_main(["fit", "--config", str(CONF / "experiment/quickstart.yaml"), "--config",
              str(CONF / "experiment/ladder/single.yaml"), "--trainer.max_steps=4", "--trainer.callbacks=[]",
              "--data.init_args.batch_size=4", "--data.init_args.num_train=16", "--trainer.limit_val_batches=0",
              "--checkpoint.every_n_train_steps=2", "--checkpoint.save_top_k=-1",
              "--trainer.enable_progress_bar=false", "--trainer.default_root_dir", str(run)])
    args = [str(run), "--tags", "single_object", "colors", "--min-per-tag", "1", "--seeds", "0", "--val", "8",
            "--setting", "steps=2,temperature=0.3", "--json", str(tmp_path / "curve.json"),
            "--plot", str(tmp_path / "curve.png")]
    table = learning_curve.main(args)["rung"]
    assert sorted(table) == [2, 4]
    for row in table.values():
        assert set(row["shapes"][0]) == {"single_object", "colors", "overall", "seen", "heldout"}
        assert row["shapes"][0]["heldout"] is not None  # the colours suite names held-out colour x shape pairs
        assert math.isfinite(row["val/loss"]) and math.isfinite(row["caption/shuffle_gap"])
        assert row["caption/spread"] >= 0
    assert (tmp_path / "curve.png").stat().st_size > 0
    back = tmp_path / "back"
    (back / "checkpoints").mkdir(parents=True)
    consolidate(next((run / "checkpoints").glob("*step=4.ckpt")), back / "checkpoints/step=4.safetensors")
    elsewhere = [str(back), *args[1:-4], "--json", str(tmp_path / "back.json")]
    assert learning_curve.main(elsewhere)["back"] == {4: table[4]}
    kept = json.loads((tmp_path / "curve.json").read_text())
    monkeypatch.setattr(learning_curve, "score", lambda *a: (_ for _ in ()).throw(AssertionError("scored again")))
    assert learning_curve.main(args)["rung"] == table and len(kept) == 2


def test_the_split_scores_seen_and_held_out_prompts_apart():
    results = [{"correct": True}, {"correct": False}, {"correct": True}, {"correct": True}]
    split = learning_curve.split_accuracy(results, [False, True, False, True])
    assert split == {"seen": 1.0, "heldout": 0.5}
    assert learning_curve.split_accuracy(results[:1], [False]) == {"seen": 1.0, "heldout": None}
