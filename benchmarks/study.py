"""The Fluid paper's study on the shapes world: the four variants at matched size and budget, and a scaling
family of the Fluid variant, trained one after another and evaluated the same way.

    OMP_NUM_THREADS=2 python benchmarks/study.py --out runs/study               # the whole study (hours on a CPU)
    python benchmarks/study.py --quick --out runs/study_quick                   # tiny batches, 3 steps: what CI runs
    python benchmarks/study.py --only fluid maskgit --steps 500 --out runs/study_500
    python benchmarks/study.py --out runs/study --reuse --results benchmarks/RESULTS.md  # report again, append

Runs can be split over processes (``--only``, same ``--out``, one thread each); a final ``--reuse`` over all of
them reports them together from their saved training and evaluation (<run>/train.json, <run>/eval.json).

Every run is conf/experiment/quickstart.yaml + conf/experiment/study/common.yaml + its overlay files (VARIANTS),
trained in this process through the real CLI into <out>/<name>. Each checkpoint is then loaded and measured:
generator parameters, training FLOPs (the Throughput callback's 6 × trainable parameters × tokens estimate),
train wall time, validation loss of the EMA weights on fixed validation scenes with seeded masks and timesteps,
shapes scores per GenEval tag on the evaluation suite (one image per record), an FID of those images against the
renderer's images of the same prompts, and a captioned sample grid. <out>/STUDY.md holds the tables, the grids
and, for the scaling family, val loss against parameters and FLOPs with fitted power laws (<out>/scaling.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from fluid_lightning.callbacks.throughput import estimated_flops_per_image
from fluid_lightning.checkpointing import load
from fluid_lightning.cli import lightning_cli
from fluid_lightning.commands.params import human
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import (
    ShapesDataset,
    collate_images,
    evaluation_suite,
    geneval_metadata,
    image_to_tensor,
    render_scene,
)
from fluid_lightning.data.vocabulary import TAGS
from fluid_lightning.evaluation.fid import TinyConvFeatures, TorchScriptFeatures, make_fid
from fluid_lightning.evaluation.geneval import summarize
from fluid_lightning.evaluation.shapes import score_images
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.models.summary import generator_param_split
from fluid_lightning.pipeline import FluidPipeline, make_grid, to_pil

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "conf/experiment/quickstart.yaml"
STUDY = ROOT / "conf/experiment/study"
VARIANTS = {  # name: overlay files in STUDY, after common.yaml
    "fluid": ["fluid.yaml"],
    "raster_continuous": ["raster_continuous.yaml"],
    "maskgit": ["maskgit.yaml"],
    "raster_discrete": ["raster_discrete.yaml"],
    "size_xs": ["fluid.yaml", "size_xs.yaml"],
    "size_s": ["fluid.yaml", "size_s.yaml"],
    "size_l": ["fluid.yaml", "size_l.yaml"],
}
MATCHED = ["fluid", "raster_continuous", "maskgit", "raster_discrete"]
SCALING = ["size_xs", "size_s", "fluid", "size_l"]  # fluid is the quickstart's own size
NAMES = {"fluid": "Fluid", "raster_continuous": "GPT-style continuous", "maskgit": "MaskGIT-style",
         "raster_discrete": "LlamaGen-style"}
GRID_PROMPTS = next(c["init_args"]["prompts"] for c in yaml.safe_load(QUICKSTART.read_text())["trainer"]["callbacks"]
                    if c["class_path"].endswith(".ImageGrid"))  # the quickstart's grid, read from its config
# --quick: batches of 4, 4 validation scenes during fit, no sanity check, fewer sampling steps, one record per tag.
QUICK_OVERRIDES = ["--data.init_args.batch_size=4", "--data.init_args.num_val=4", "--trainer.limit_val_batches=1",
                   "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                   "--trainer.enable_model_summary=false"]
QUICK_SAMPLING = {"steps": 4, "diffusion_steps": 4}


def run_configs(name: str) -> list[Path]:
    return [QUICKSTART, STUDY / "common.yaml", *(STUDY / f for f in VARIANTS[name])]


def train(name: str, run_dir: Path, overrides: list[str]) -> dict:
    """Fit one run through the CLI in this process; returns (and writes to <run>/train.json) what it took."""
    configs = run_configs(name)
    args = [a for c in configs for a in ("--config", str(c))]
    cli = lightning_cli([*args, f"--trainer.default_root_dir={run_dir}", *overrides], run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    info = {"name": name, "configs": [str(c.relative_to(ROOT)) for c in configs], "overrides": overrides,
            "steps": cli.trainer.global_step, "batch_size": cli.datamodule.batch_size,
            "train_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
            "ckpt": cli.trainer.checkpoint_callback.last_model_path}
    if not info["ckpt"]:
        raise RuntimeError(f"{name}: training wrote no last.ckpt under {run_dir}")
    (run_dir / "train.json").write_text(json.dumps(info, indent=1))
    return info


@torch.no_grad()
def ema_val_loss(module: GeneratorModule, num: int, batch_size: int, seed: int = 0, tags: tuple[str, ...] = TAGS) -> float:
    """Mean training loss of the EMA weights on the first ``num`` validation scenes (the runs' own validation
    stream, of ``tags``), with one seeded stream for masks, orders and timesteps, so every checkpoint sees the
    same draw."""
    data = ShapesDataset(num, image_size=module.tokenizer.image_size, stream="val", tags=tags)
    rng = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, num, batch_size):
        batch = collate_images([data[i] for i in range(start, min(start + batch_size, num))])
        tokens = module.tokenizer.encode(images_to_float(batch["image"]))
        text, text_mask = module.text_encoder(batch["caption"])
        total += float(module.sampling_generator(tokens, text, text_mask, rng=rng)) * len(batch["caption"])
    return total / num


def suite(min_per_tag: int, max_per_tag: int | None) -> list:
    """The shapes evaluation suite's scene specs, each tag repeated to ``min_per_tag`` and cut at ``max_per_tag``."""
    specs, seen = [], {}
    for spec in evaluation_suite(min_per_tag=min_per_tag):
        seen[spec.tag] = seen.get(spec.tag, 0) + 1
        if max_per_tag is None or seen[spec.tag] <= max_per_tag:
            specs.append(spec)
    return specs


def real_images(specs: list, size: int) -> torch.Tensor:
    """The renderer's image of every spec in [0, 1]; a repeated prompt gets a new layout each time, as the
    model draws a new sample, so the real set is not smaller than the generated one."""
    repeats: dict = {}
    images = []
    for spec in specs:
        repeats[spec] = repeats.get(spec, -1) + 1
        image = render_scene(replace(spec, layout_seed=spec.layout_seed + repeats[spec]), size)[0]
        images.append((image_to_tensor(image) + 1) / 2)
    return torch.stack(images)


def evaluate(info: dict, out: Path, ns: argparse.Namespace, feature: torch.nn.Module) -> dict:
    """Everything the report lists about one trained run."""
    module = load(GeneratorModule, info["ckpt"])
    generator, pipe = module.generator, FluidPipeline.from_module(module)
    changes = {"seed": 0, **(QUICK_SAMPLING if ns.quick else {})}
    settings = pipe.settings(**changes)
    specs = suite(ns.min_per_tag, 1 if ns.quick else None)
    records = [geneval_metadata(spec) for spec in specs]
    # The grid's prompts ride in the suite's batches: raster order pays per sampling call, not per image.
    prompts = [r["prompt"] for r in records] + GRID_PROMPTS
    start = time.perf_counter()
    images = torch.cat(list(pipe.generate_batches(prompts, ns.batch_size, settings)))
    sample_s = (time.perf_counter() - start) / len(prompts)
    fake = images[: len(records)]
    scores = summarize(score_images(to_pil(fake), records))
    fid = make_fid(feature)
    fid.update(real_images(specs, fake.shape[-1]), real=True)
    fid.update(fake, real=False)
    grid = make_grid(to_pil(images[len(records):]), captions=GRID_PROMPTS, scale=3)
    grid_path = out / "grids" / f"{info['name']}.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)
    flops_per_image = estimated_flops_per_image(module, generator.num_tokens)
    return {
        **info, "token_kind": generator.token_kind, "order": generator.order, "tokens": generator.num_tokens,
        "tokenizer": type(module.tokenizer).__name__, "head": type(generator.head).__name__,
        "width": generator.width, "depth": generator.depth, "params": generator_param_split(generator),
        "train_flops": flops_per_image * info["steps"] * info["batch_size"],
        "val_loss": ema_val_loss(module, ns.val_images, ns.batch_size), "fid": float(fid.compute()),
        "sample_s": sample_s, "settings": str(settings), "images": len(records), "shapes": scores,
        "grid": str(grid_path),
    }


def evaluation_key(info: dict, ns: argparse.Namespace, feature_name: str) -> dict:
    """What an evaluation depends on: the checkpoint as written and the evaluation settings. --reuse takes a
    run's <run>/eval.json only when its key is this one, so runs trained in separate processes (--only) can be
    reported together without sampling them again."""
    ckpt = Path(info["ckpt"])
    return {"ckpt": str(ckpt), "ckpt_mtime_ns": ckpt.stat().st_mtime_ns, "quick": ns.quick,
            "min_per_tag": ns.min_per_tag, "val_images": ns.val_images, "batch_size": ns.batch_size,
            "fid_feature": feature_name}


def power_law(x: list[float], y: list[float]) -> dict:
    """y ≈ a·x^b by least squares on logs (numpy polyfit); r2 is that line's R² in log space."""
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError(f"a power law needs positive values; got x={x}, y={y}")
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    b, log_a = np.polyfit(lx, ly, 1)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1 - float(((ly - (b * lx + log_a)) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"a": math.exp(log_a), "b": float(b), "r2": r2}


def scaling_plot(rows: list[dict], fits: dict, path: Path) -> None:
    """Val loss against parameters and against training FLOPs, log-log, each with its fitted power law."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss = [r["val_loss"] for r in rows]
    for ax, key, label in zip(fig.subplots(1, 2), ("params", "flops"), ("generator parameters", "training FLOPs")):
        x = [r["params"]["total"] if key == "params" else r["train_flops"] for r in rows]
        fit = fits[key]
        line = np.geomspace(min(x), max(x), 50)
        ax.loglog(x, loss, "o")
        ax.loglog(line, fit["a"] * line ** fit["b"], "--", label=f"{fit['a']:.3g}·x^{fit['b']:.3g}, R²={fit['r2']:.3f}")
        for xi, yi, r in zip(x, loss, rows):
            ax.annotate(r["name"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes over a narrow range label every minor tick
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=label, ylabel="val loss (EMA)", title=f"val loss vs {label}")
        ax.legend()
    fig.savefig(path, dpi=120)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def report(results: dict[str, dict], fits: dict | None, ns: argparse.Namespace, feature_name: str,
           link_base: Path) -> str:
    """The markdown section; image links are relative to ``link_base`` (the folder of the file it goes in)."""
    def link(path: str | Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), link_base.resolve())).as_posix()

    any_row = next(iter(results.values()))
    budget = "quick" if ns.quick else f"{ns.steps} steps" if ns.steps else "the quickstart's budget"
    lines = [
        f"## study: the four Fluid variants and a Fluid scaling family ({budget})", "",
        f"Command: `python benchmarks/study.py {' '.join(ns.argv)}`. Machine: {cpu_name()}, torch "
        f"{torch.__version__}, {any_row['threads']} intra-op thread(s) while training; {time.strftime('%Y-%m-%d')}.",
        f"Every run: conf/experiment/quickstart.yaml + conf/experiment/study/common.yaml + its variant/size files, "
        f"{any_row['steps']} steps × batch {any_row['batch_size']}. Val loss: EMA weights on {ns.val_images} "
        "validation scenes, seeded masks/timesteps (a diffusion loss for continuous tokens, a cross-entropy for "
        f"discrete ones: compare within a kind). Shapes: {any_row['images']} suite records, one image each, "
        f"sampled with {any_row['settings']}; scores per GenEval tag. FID: {feature_name}, those images against "
        "the renderer's images of the same prompts. Train FLOPs: 6 × trainable parameters × tokens × images.", "",
        "| variant | tokens | order | tokenizer → head | tokens/image | generator params | train FLOPs | train s "
        "| val loss | FID | sample s/image | overall | " + " | ".join(TAGS) + " |",
        "|---" * (12 + len(TAGS)) + "|",
    ]
    for name, r in results.items():
        tags = [f"{r['shapes']['tags'][t]['accuracy']:.2f}" if t in r["shapes"]["tags"] else "–" for t in TAGS]
        what = NAMES.get(name) or f"{r['width']} × {r['depth']}"
        lines.append(
            f"| {name} ({what}) | {r['token_kind']} | "
            f"{r['order']} | {r['tokenizer']} → {r['head']} | {r['tokens']} | {human(r['params']['total'])} | "
            f"{r['train_flops']:.2e} | {r['train_s']:.1f} | {r['val_loss']:.4f} | {r['fid']:.3g} | "
            f"{r['sample_s']:.3f} | {r['shapes']['overall']:.3f} | " + " | ".join(tags) + " |")
    lines += ["", "Samples (the same prompts and seed for every run):", ""]
    for group in (MATCHED, [n for n in SCALING if n != "fluid"]):
        shown = [n for n in group if n in results]
        if shown:
            lines += ["| " + " | ".join(shown) + " |", "|---" * len(shown) + "|",
                      "| " + " | ".join(f"![{n}]({link(results[n]['grid'])})" for n in shown) + " |", ""]
    if fits is None:
        lines.append(f"Scaling: needs at least three of {', '.join(SCALING)} in the run; fit skipped.")
        return "\n".join(lines) + "\n"
    family = [results[n] for n in SCALING if n in results]
    lines += ["### Scaling family (continuous/random)", "",
              "| size | width × depth | generator params | train FLOPs | val loss |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['width']} × {r['depth']} | {human(r['params']['total'])} | "
              f"{r['train_flops']:.2e} | {r['val_loss']:.4f} |" for r in family]
    lines += ["", *(f"- val loss ≈ {f['a']:.3g} · {what}^{f['b']:.3g}, R² = {f['r2']:.3f} (log-log least squares, "
                    f"{len(family)} sizes)" for what, f in (("N", fits["params"]), ("C", fits["flops"]))),
              "", f"![val loss vs parameters and FLOPs]({link(ns.out / 'scaling.png')})", ""]
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="runs, grids, STUDY.md go here")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="runs to do")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps (default: the quickstart's)")
    parser.add_argument("--quick", action="store_true", help="CI: batch 4, 3 steps unless --steps, few samples")
    parser.add_argument("--reuse", action="store_true", help="skip training where <out>/<run>/train.json exists, "
                        "and evaluating where <out>/<run>/eval.json has the same checkpoint and settings")
    parser.add_argument("--min-per-tag", type=int, default=32, help="evaluation suite records per tag, at least")
    parser.add_argument("--val-images", type=int, default=256, help="validation scenes for the EMA val loss")
    parser.add_argument("--batch-size", type=int, default=32, help="sampling and val-loss batch")
    parser.add_argument("--fid-feature", default=None, help="TorchScript FID Inception (evaluate fid --feature); "
                        "default: TinyConvFeatures, a fixed random conv net")
    parser.add_argument("--results", type=Path, default=None, help="also append the section to this file")
    ns = parser.parse_args(argv)
    ns.argv = argv
    if ns.quick:
        ns.steps = ns.steps or 3
        ns.val_images = min(ns.val_images, 8)
    return ns


def main(argv: list[str] | None = None) -> dict:
    ns = parse(sys.argv[1:] if argv is None else list(argv))
    # Each run goes through lightning_cli(args) while this script has arguments of its own: not a mistake here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    overrides = (QUICK_OVERRIDES if ns.quick else []) + ([f"--trainer.max_steps={ns.steps}"] if ns.steps else [])
    if ns.fid_feature:
        feature, feature_name = (TorchScriptFeatures(ns.fid_feature, call_kwargs={"return_features": True}),
                                 f"TorchScript features from {ns.fid_feature}")
    else:
        feature, feature_name = TinyConvFeatures(), ("TinyConvFeatures (a fixed random conv net, 64 features: "
                                                     "comparable only within this table, not with Inception FIDs)")
    results = {}
    for name in [n for n in VARIANTS if n in ns.only]:
        run_dir = ns.out / name
        saved = run_dir / "train.json"
        if ns.reuse and saved.exists():
            info = json.loads(saved.read_text())
            print(f"# {name}: reusing {info['ckpt']} ({info['steps']} steps)", flush=True)
        else:
            print(f"# {name}: training {' + '.join(VARIANTS[name])}", flush=True)
            info = train(name, run_dir, overrides)
        key, saved_eval = evaluation_key(info, ns, feature_name), run_dir / "eval.json"
        cached = json.loads(saved_eval.read_text()) if ns.reuse and saved_eval.exists() else {}
        if cached.get("key") == key and Path(cached["result"]["grid"]).exists():
            results[name] = cached["result"]
            print(f"# {name}: reusing its evaluation ({saved_eval})", flush=True)
        else:
            results[name] = evaluate(info, ns.out, ns, feature)
            saved_eval.write_text(json.dumps({"key": key, "result": results[name]}, indent=1))
        r = results[name]
        print(f"#   {r['steps']} steps in {r['train_s']:.1f} s, val loss {r['val_loss']:.4f}, FID {r['fid']:.3g}, "
              f"shapes {r['shapes']['overall']:.3f}", flush=True)
    family = [results[n] for n in SCALING if n in results]
    fits = None
    if len(family) >= 3:
        fits = {"params": power_law([r["params"]["total"] for r in family], [r["val_loss"] for r in family]),
                "flops": power_law([r["train_flops"] for r in family], [r["val_loss"] for r in family])}
        scaling_plot(family, fits, ns.out / "scaling.png")
    (ns.out / "results.json").write_text(json.dumps({"runs": results, "fits": fits}, indent=1))
    (ns.out / "STUDY.md").write_text(report(results, fits, ns, feature_name, ns.out))
    if ns.results is not None:
        with ns.results.open("a", encoding="utf-8") as f:
            f.write("\n" + report(results, fits, ns, feature_name, ns.results.parent))
    print(f"wrote {ns.out / 'STUDY.md'}" + (f" and appended it to {ns.results}" if ns.results else ""))
    return {"runs": results, "fits": fits}


if __name__ == "__main__":
    main()
