"""Command line: LightningCLI for fit/validate/test/predict, plus `sample`, `params`, `data`, `evaluate`,
`checkpoint` and `tokenizer`; `<command> --help` gives each one's options.

    python -m fluid_lightning fit --config conf/experiment/quickstart.yaml      (also validate, test, predict)
    python -m fluid_lightning sample --ckpt runs/.../last.ckpt --prompt "a photo of a red circle" --out runs/samples
    python -m fluid_lightning params conf/model/*.yaml
    python -m fluid_lightning data shapes --out data/shapes --n 20000
    python -m fluid_lightning evaluate generate --ckpt last.ckpt --metadata evaluation_metadata.jsonl --out runs/gen
    python -m fluid_lightning evaluate shapes --images runs/gen
    python -m fluid_lightning checkpoint consolidate runs/.../last.ckpt runs/model.safetensors
    python -m fluid_lightning tokenizer stats|cache|evaluate|export ...   (see tokenizer_commands.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from .config import register_resolvers

_CUSTOM_COMMANDS = ("sample", "params", "data", "evaluate", "checkpoint", "tokenizer")
_LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _fluid_cli_class():
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

    from .checkpointing import find_last_checkpoint

    class FluidCLI(LightningCLI):
        """LightningCLI with two resume fixes: ``--ckpt_path last`` also finds the last checkpoint of an
        earlier run's version folder, and the model settings that the checkpoint's hyper-parameters
        replace (Lightning rebuilds the model from them) are named instead of dropped silently."""

        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)
            subcommand = self.config.get("subcommand")
            config = self.config.get(subcommand) if subcommand else None
            if config is None or not config.get("ckpt_path"):
                return
            if config.ckpt_path == "last":
                found = find_last_checkpoint(config.trainer.default_root_dir or ".")
                if found is not None:
                    config.ckpt_path = str(found)
                    rank_zero_info(f"--ckpt_path last: resuming from {found}")
            self._given_model = _flatten(config.model.as_dict()) if config.get("model") else {}

        def before_instantiate_classes(self) -> None:
            given = getattr(self, "_given_model", None)
            if not given:
                return
            loaded = _flatten(self.config[self.subcommand].model.as_dict())
            changed = [f"{key}: {given[key]!r} -> {loaded[key]!r}" for key in sorted(given.keys() & loaded.keys())
                       if given[key] != loaded[key]]
            if changed:
                rank_zero_warn("--ckpt_path: the model is rebuilt from the checkpoint's hyper-parameters, which "
                               f"replace these given settings: {'; '.join(changed)}")

    return FluidCLI


def lightning_cli(args: list[str] | None = None, run: bool = True):
    import jsonargparse
    import lightning as L

    jsonargparse.set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    register_resolvers()
    # Frozen parts (text encoder, tokenizer, EMA copy) stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # omegaconf+ resolves ${...} after command-line overrides, so interpolations follow them.
    return _fluid_cli_class()(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs"},
        args=args,
        run=run,
    )


def sample_main(argv: list[str]) -> None:
    from .pipeline import add_sampling_args, positive_int

    parser = argparse.ArgumentParser(prog="fluid_lightning sample", description="Generate images from a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (.ckpt) or a consolidated .safetensors")
    parser.add_argument("--prompt", action="append", required=True, help="a caption; repeat for several")
    parser.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    parser.add_argument("--per-prompt", type=positive_int, default=1, help="images per prompt")
    add_sampling_args(parser)
    ns = parser.parse_args(argv)

    from .pipeline import FluidPipeline, default_device, make_grid, sampling_kwargs, to_pil

    pipe = FluidPipeline.from_checkpoint(ns.ckpt, device=default_device(ns.device))
    prompts = [p for p in ns.prompt for _ in range(ns.per_prompt)]
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = pipe.generate_batches(prompts, progress=True, **sampling_kwargs(ns))
    images = [image for batch in batches for image in to_pil(batch)]
    for i, image in enumerate(images):
        image.save(out / f"{i:04d}.png")
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
    make_grid(images, columns=ns.per_prompt if ns.per_prompt > 1 else None).save(out / "grid.png")
    print(f"wrote {len(images)} image{'' if len(images) == 1 else 's'} and grid.png to {out}")


def params_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fluid_lightning params", description="Parameter counts of model configs, built on the meta device."
    )
    parser.add_argument("configs", nargs="+", help="YAML files with model.init_args.generator")
    parser.add_argument(
        "--with", dest="base", action="append", default=[], help="config merged under each one (e.g. the data config)"
    )
    ns = parser.parse_args(argv)
    from .models.summary import generator_param_counts, load_generator_config

    print(f"{'config':<40} {'transformer':>12} {'aligner':>10} {'head':>10} {'total':>12}")
    for path in ns.configs:
        try:
            counts = generator_param_counts(load_generator_config(path, ns.base))
        except (ValueError, OSError) as err:
            parser.error(str(err))
        print(
            f"{path:<40} {_human(counts['transformer']):>12} {_human(counts['aligner']):>10} "
            f"{_human(counts['head']):>10} {_human(counts['total']):>12}"
        )


def data_main(argv: list[str]) -> None:
    from .data.commands import add_data_commands

    parser = argparse.ArgumentParser(prog="fluid_lightning data", description="Build datasets.")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    ns.func(ns)


def evaluate_main(argv: list[str]) -> None:
    from .evaluation.commands import add_evaluate_commands

    parser = argparse.ArgumentParser(prog="fluid_lightning evaluate", description="Generate and score images.")
    add_evaluate_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    ns.func(ns)


def checkpoint_main(argv: list[str]) -> None:
    from .checkpointing import consolidate_main

    consolidate_main(argv)


def tokenizer_main(argv: list[str]) -> None:
    from .tokenizer_commands import add_tokenizer_commands

    parser = argparse.ArgumentParser(prog="fluid_lightning tokenizer", description="Tokenizer statistics, latent caching, export.")
    add_tokenizer_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(argv)
    ns.func(ns)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if unit != "K" else f"{n / size:.0f}{unit}"
    return str(n)


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    if argv[0] in _CUSTOM_COMMANDS:
        commands = {"sample": sample_main, "params": params_main, "data": data_main, "evaluate": evaluate_main,
                    "checkpoint": checkpoint_main, "tokenizer": tokenizer_main}
        try:
            commands[argv[0]](argv[1:])
        except (OSError, ValueError) as err:  # bad input: the message names the fix; the traceback adds nothing
            if os.environ.get("FLUID_LIGHTNING_TRACEBACK"):
                raise
            sys.exit(f"fluid_lightning {argv[0]}: error: {err}")
        return
    if not argv[0].startswith("-") and argv[0] not in _LIGHTNING_COMMANDS:
        sys.exit(f"fluid_lightning: unknown command {argv[0]!r}; choose from "
                 f"{', '.join(_LIGHTNING_COMMANDS + _CUSTOM_COMMANDS)} (--help lists what each does)")
    lightning_cli(None if args is None else argv)


if __name__ == "__main__":
    main()
