"""Sampler settings of a trained checkpoint side by side: seconds per image and shapes scores.

    OMP_NUM_THREADS=2 python benchmarks/bench_samplers.py --ckpt runs/quickstart/checkpoints/last.ckpt \\
        --settings ddpm:50:32 dpm++:12:32 dpm++:12:16 --seeds 0 1 2

Each setting is sampler:diffusion steps:AR steps, optionally followed by comma-separated
SamplingSettings fields (``dpm++:12:16,cfg=4,temperature=0.8``); the checkpoint's other sampling
settings are kept. For
every setting and seed it samples the shapes evaluation suite (`--min-per-tag` records per tag, one
image each), scores it with the shapes scorer, and times it; settings take turns within each seed.
Prints a table of the median seconds per image, every seed's overall score and the mean per-tag
scores: the quality side of a faster sampler (benchmarks/bench_vs_mar.py times it against MAR), and
with several seeds of one setting, the seed-to-seed spread of an unchanged checkpoint's score.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fluid_lightning.checkpointing import load
from fluid_lightning.data.shapes import evaluation_suite, geneval_metadata
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.evaluation.geneval import summarize
from fluid_lightning.evaluation.shapes import score_images
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.pipeline import FluidPipeline, to_pil

FIELD_TYPES = {"cfg": float, "temperature": float, "cfg_schedule": str, "top_k": int, "timestep_spacing": str,
               "steps": int, "diffusion_steps": int, "diffusion_sampler": str, "detail_temperature": float,
               "detail_fraction": float, "refine_passes": int, "refine_group": int,
               "refine_temperature": float}


def parse_fields(fields: list[str], text: str) -> dict:
    """``name=value`` SamplingSettings fields (``text``: the whole setting, for the error); ``none`` or ``null``
    unsets an optional field (``refine_temperature=none``)."""
    setting = {}
    for field in fields:
        name, _, value = field.partition("=")
        if name not in FIELD_TYPES:
            raise SystemExit(f"unknown setting field {name!r} in {text!r}; choose from {sorted(FIELD_TYPES)}")
        setting[name] = None if value.lower() in ("none", "null") else FIELD_TYPES[name](value)
    return setting


def parse_setting(text: str) -> dict:
    head, *fields = text.split(",")
    sampler, diffusion_steps, steps = head.split(":")
    return {"diffusion_sampler": sampler, "diffusion_steps": int(diffusion_steps), "steps": int(steps),
            **parse_fields(fields, text)}


def replace_ema(module: GeneratorModule) -> GeneratorModule:
    """The module with its EMA copy dropped, so it samples with the trained weights."""
    module.ema = None
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--settings", nargs="+", default=["ddpm:50:32", "dpm++:12:32", "dpm++:12:16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--min-per-tag", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tags", nargs="+", choices=TAGS, default=list(TAGS),
                        help="score only these tags (a ladder rung: single_object colors)")
    parser.add_argument("--weights", choices=("ema", "trained"), default="ema",
                        help="sample with the EMA copy (what every command uses) or the trained weights")
    ns = parser.parse_args()
    module = load(GeneratorModule, ns.ckpt)
    pipe = FluidPipeline.from_module(module if ns.weights == "ema" else replace_ema(module)).to("cpu")
    records = [geneval_metadata(spec) for spec in evaluation_suite(min_per_tag=ns.min_per_tag) if spec.tag in ns.tags]
    prompts = [r["prompt"] for r in records]
    print(f"# {ns.ckpt}: {len(records)} prompts x 1 image, {torch.get_num_threads()} thread(s); base settings "
          f"{pipe.sampling}")
    results: dict[str, list[tuple[float, dict]]] = {s: [] for s in ns.settings}
    for seed in ns.seeds:
        for setting in ns.settings if seed % 2 == 0 else ns.settings[::-1]:
            start = time.perf_counter()
            images = [im for batch in pipe.generate_batches(prompts, ns.batch_size, seed=seed, **parse_setting(setting))
                      for im in to_pil(batch)]
            seconds = (time.perf_counter() - start) / len(images)
            summary = summarize(score_images(images, records))
            results[setting].append((seconds, summary))
            per_tag = " ".join(f"{t} {summary['tags'][t]['accuracy']:.3f}" for t in ns.tags)
            print(f"#   {setting} seed {seed}: {seconds:.3f} s/image, overall {summary['overall']:.3f} ({per_tag})",
                  flush=True)
    print("| setting | s/image (median) | overall per seed | " + " | ".join(ns.tags) + " |")
    print("|---|---|---|" + "---|" * len(ns.tags))
    for setting, runs in results.items():
        tags = [statistics.mean(s["tags"][t]["accuracy"] for _, s in runs) for t in ns.tags]
        overall = ", ".join(f"{s['overall']:.3f}" for _, s in runs)
        print(f"| {setting} | {statistics.median(t for t, _ in runs):.3f} | {overall} | "
              + " | ".join(f"{v:.2f}" for v in tags) + " |")


if __name__ == "__main__":
    main()
