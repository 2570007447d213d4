"""Score every checkpoint of one or more runs: the learning curve of a ladder rung or the quickstart.

    OMP_NUM_THREADS=1 python benchmarks/learning_curve.py runs/curve/fluid_single runs/curve/raster_single \\
        --tags single_object colors --seeds 0 1 --json runs/curve/curve.json --plot runs/curve/curve.png

A run is a `default_root_dir` whose `checkpoints/` holds the step checkpoints of one fit
(`--checkpoint.every_n_train_steps N --checkpoint.save_top_k -1` keeps them all), or consolidated ones
named `*step=N.safetensors` (`benchmarks/gpu_curve.sh` brings them back from a GPU). For each checkpoint
(EMA weights) it measures, on `--val` validation scenes of the given tags (the runs' own validation
stream), the loss with seeded draws and the two caption numbers every fit logs (caption/shuffle_gap,
caption/spread: `fluid_lightning.evaluation.caption_use`); then it samples the shapes suite's records
of those tags (`--min-per-tag`, one image each, once per `--seeds`) with the checkpoint's sampling
settings, changed by `--setting` fields (`cfg=3,cfg_schedule=constant,temperature=0.7`), and scores
them per tag, and over the prompts training saw against the held-out ones. Results are kept in `--json`
by checkpoint, so a rerun scores only new checkpoints.
Prints a markdown table; `--plot` draws score and val loss against steps (log 2 axis).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch
from bench_samplers import parse_fields
from matplotlib.figure import Figure
from study import ema_val_loss

from fluid_lightning.checkpointing import load
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import (
    ShapesDataset,
    collate_images,
    evaluation_suite,
    geneval_metadata,
    is_heldout,
)
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.evaluation.caption_use import condition_spread, first_of_each, shuffle_gap
from fluid_lightning.evaluation.geneval import summarize
from fluid_lightning.evaluation.shapes import score_images
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.pipeline import FluidPipeline, to_pil


def step_checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run / "checkpoints").glob("*step=*"):
        if path.suffix in (".ckpt", ".safetensors"):  # a fit's checkpoint, or one `checkpoint consolidate` wrote
            found.append((int(re.search(r"step=(\d+)", path.name).group(1)), path))
    if not found:
        raise SystemExit(f"{run}: no checkpoints/*step=*.ckpt or .safetensors (fit with --checkpoint.save_top_k -1)")
    return sorted(found)


@torch.no_grad()
def caption_numbers(module: GeneratorModule, tags: tuple[str, ...], num: int, batch_size: int = 32) -> dict:
    data = ShapesDataset(num, image_size=module.tokenizer.image_size, stream="val", tags=tags)
    generator, gaps, spreads = module.sampling_generator, [], []
    for i, start in enumerate(range(0, num, batch_size)):
        batch = collate_images([data[j] for j in range(start, min(start + batch_size, num))])
        tokens = module.tokenizer.encode(images_to_float(batch["image"]))
        text, text_mask = module.text_encoder(batch["caption"])
        true, shuffled = shuffle_gap(generator, tokens, text, text_mask, seed=i)
        gaps.append(shuffled - true)
        distinct = first_of_each(batch["caption"])
        spreads.append(condition_spread(generator, text[distinct], text_mask[distinct]))
    return {"caption/shuffle_gap": statistics.mean(gaps), "caption/spread": statistics.mean(spreads)}


def score(ckpt: Path, tags: tuple[str, ...], ns: argparse.Namespace) -> dict:
    module = load(GeneratorModule, ckpt).eval()
    result = {"val/loss": ema_val_loss(module, ns.val, 32, tags=tags), **caption_numbers(module, tags, ns.val)}
    pipe = FluidPipeline.from_module(module)
    specs = [s for s in evaluation_suite(min_per_tag=ns.min_per_tag) if s.tag in tags]
    records, heldout = [geneval_metadata(s) for s in specs], [is_heldout(s) for s in specs]
    per_seed = []
    for seed in ns.seeds:
        images = [im for batch in pipe.generate_batches([r["prompt"] for r in records], 64, seed=seed,
                                                          **parse_fields(list(filter(None, ns.setting.split(","))), ns.setting))
                  for im in to_pil(batch)]
        results = score_images(images, records)
        summary = summarize(results)
        per_seed.append({tag: summary["tags"][tag]["accuracy"] for tag in tags} | {"overall": summary["overall"]}
                        | split_accuracy(results, heldout))
    result["shapes"] = per_seed
    return result


def split_accuracy(results: list[dict], heldout: list[bool]) -> dict:
    """Accuracy over the records whose prompt training saw, and over the held-out ones (a colour on a shape
    never drawn in it, a count, relation or pair never captioned): what a model composes rather than recalls."""
    split = {}
    for name, wanted in (("seen", False), ("heldout", True)):
        hits = [r["correct"] for r, h in zip(results, heldout) if h == wanted]
        split[name] = sum(hits) / len(hits) if hits else None
    return split


def mean_of(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows if row.get(key) is not None]
    return f"{statistics.mean(values):.2f}" if values else "—"


def plot(table: dict[str, dict[int, dict]], tags: tuple[str, ...], path: Path) -> None:
    fig = Figure(figsize=(4 * (len(tags) + 1), 3.2))
    axes = fig.subplots(1, len(tags) + 1)
    for run, rows in table.items():
        steps = sorted(rows)
        for ax, tag in zip(axes, tags):
            ax.plot(steps, [statistics.mean(s[tag] for s in rows[k]["shapes"]) for k in steps], marker="o", label=run)
            ax.set_title(tag)
        axes[-1].plot(steps, [rows[k]["val/loss"] for k in steps], marker="o", label=run)
        axes[-1].set_title("val loss (EMA)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tags", nargs="+", choices=TAGS, default=list(TAGS))
    parser.add_argument("--min-per-tag", type=int, default=48)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--setting", default="", help="SamplingSettings changes, e.g. cfg=3,temperature=0.7")
    parser.add_argument("--val", type=int, default=256, help="validation scenes for the loss and caption numbers")
    parser.add_argument("--steps", nargs="*", type=int, help="score only these steps")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    ns = parser.parse_args(argv)
    tags = tuple(ns.tags)
    key_extra = f"tags={','.join(tags)};min={ns.min_per_tag};seeds={ns.seeds};setting={ns.setting};val={ns.val}"
    cache = json.loads(ns.json.read_text()) if ns.json and ns.json.exists() else {}
    table: dict[str, dict[int, dict]] = {}
    for run in ns.runs:
        for step, ckpt in step_checkpoints(run):
            if ns.steps and step not in ns.steps:
                continue
            key = f"{ckpt}|{ckpt.stat().st_mtime_ns}|{key_extra}"
            if key not in cache:
                cache[key] = score(ckpt, tags, ns)
                if ns.json:
                    ns.json.write_text(json.dumps(cache, indent=1))
            table.setdefault(run.name, {})[step] = cache[key]
            row = cache[key]
            shapes = " | ".join(mean_of(row["shapes"], key) for key in (*tags, "seen", "heldout"))
            print(f"| {run.name} | {step} | {shapes} | {row['val/loss']:.4f} | {row['caption/shuffle_gap']:.4f} "
                  f"| {row['caption/spread']:.3f} |", flush=True)
    if ns.plot:
        plot(table, tags, ns.plot)
    return table


if __name__ == "__main__":
    main()
