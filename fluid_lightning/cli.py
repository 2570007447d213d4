"""The command line: LightningCLI for fit/validate/test/predict and one table of the other commands.

    python -m fluid_lightning fit --config conf/experiment/quickstart.yaml
    python -m fluid_lightning sample --ckpt runs/quickstart/checkpoints/last.ckpt --prompt "a photo of a red circle" --out runs/s
    python -m fluid_lightning <command> --help
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import jsonargparse
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .callbacks.caption_use import CaptionUse
from .callbacks.progress import LineProgress
from .callbacks.reliability import LastAtEndCheckpoint, NonFiniteLossGuard, PreemptionCheckpoint
from .checkpointing import CheckpointError, checkpoints_in, find_last_checkpoint, safe_load, upgrade_hparams
from .commands import checkpoint, data, evaluate, params, sample, tokenizer
from .config import register_resolvers
from .loggers import FluidTensorBoardLogger

LIGHTNING_COMMANDS = {
    "fit": "train a model (LightningCLI: --config YAML files, then --key=value overrides)",
    "validate": "validation loss of a checkpoint (--ckpt_path)",
    "test": "test loss of a checkpoint (--ckpt_path)",
    "predict": "images for every validation caption, written by a callback (see README)",
}
COMMANDS = {"sample": sample, "params": params, "data": data, "evaluate": evaluate, "checkpoint": checkpoint,
            "tokenizer": tokenizer}

# Every fit gets these callbacks, configured under their own keys (e.g. --checkpoint.every_n_train_steps=500);
# a `trainer.callbacks` list in a config or on the command line adds to them instead of replacing them.
ATOMIC_CHECKPOINT_IO = "fluid_lightning.checkpointing.AtomicCheckpointIO"  # the default trainer.plugins
DEFAULT_CALLBACKS = {
    "checkpoint": (LastAtEndCheckpoint, {"save_last": True, "every_n_train_steps": 500, "enable_version_counter": False}),
    "lr_monitor": (LearningRateMonitor, {"logging_interval": "step"}),
    "nonfinite_guard": (NonFiniteLossGuard, {}),
    "preemption": (PreemptionCheckpoint, {}),
    "caption_use": (CaptionUse, {}),
}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


class FluidCLI(LightningCLI):
    """LightningCLI with the project's defaults and resume fixes:

    - the default callbacks above and atomic checkpoint files for every trainer config; checkpoints go to
      ``<trainer.default_root_dir>/checkpoints`` unless ``checkpoint.dirpath`` says otherwise;
    - a ``fit`` without ``--ckpt_path`` into a checkpoint folder that already holds checkpoints is refused in
      one line (it would overwrite them);
    - ``--ckpt_path last`` also finds the last checkpoint of an earlier run; the checkpoint's config is
      read as tensors and plain data only (one line refuses a file carrying code) and upgraded from
      earlier versions; the model settings it replaces (Lightning rebuilds the model from it) are named;
    - when stdout is not a terminal (a log file), progress is a plain line every 30 s, not a tqdm bar;
    - the default logger is TensorBoard without the empty ``hp_metric`` card (``loggers.py``).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key, (callback, defaults) in DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback, key)
            parser.set_defaults({f"{key}.{name}": value for name, value in defaults.items()})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config  # (run=False: no subcommand)
        if config.get("checkpoint") is not None and config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path(config.trainer.default_root_dir or ".") / "checkpoints")
        if not config.get("ckpt_path"):
            if subcommand == "fit":
                _refuse_a_second_run(config)
            return
        if config.ckpt_path == "last":
            found = find_last_checkpoint(config.trainer.default_root_dir or ".")
            if found is not None:
                config.ckpt_path = str(found)
                rank_zero_info(f"--ckpt_path last: resuming from {found}")
        self._given_model = _flatten(config.model.as_dict()) if config.get("model") else {}

    def _parse_ckpt_path(self) -> None:
        """Lightning's, with a safe load that refuses code in one line and today's names for old configs."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = upgrade_hparams(safe_load(ckpt_path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

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

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        # Lightning refuses a ModelCheckpoint without checkpointing, and a LearningRateMonitor without a logger.
        if trainer_config.get("enable_checkpointing") is False:
            extra = [c for c in extra if not isinstance(c, ModelCheckpoint)]
        if trainer_config.get("logger") is False:
            extra = [c for c in extra if not isinstance(c, LearningRateMonitor)]
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = FluidTensorBoardLogger(trainer_config.get("default_root_dir") or "runs")
        given = trainer_config.get("callbacks") or []
        has_bar = any(isinstance(c, ProgressBar) for c in (given if isinstance(given, list) else [given]))
        if not sys.stdout.isatty() and trainer_config.get("enable_progress_bar") is not False and not has_bar:
            extra.append(LineProgress())
        return self._instantiate_trainer({**trainer_config, **kwargs}, extra)


def _refuse_a_second_run(config) -> None:
    """A new fit would overwrite another run's checkpoints (same names, same folder): say so instead."""
    if config.get("checkpoint") is None or config.trainer.get("enable_checkpointing") is False:
        return
    if any(Path(config.trainer.default_root_dir or ".").glob("hpc_ckpt_*.ckpt")):
        return  # a SLURM requeue: Lightning resumes from its own hpc checkpoint
    folder = Path(config.checkpoint.dirpath)
    earlier = [p.name for p in checkpoints_in(folder)]
    if earlier:
        shown = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
        raise CheckpointError(f"{folder} already holds checkpoints of an earlier run ({shown}); a new run would overwrite "
                              "them: resume it with --ckpt_path last, or give this run another "
                              "--trainer.default_root_dir (or delete that folder)")


def lightning_cli(args: list[str] | None = None, run: bool = True) -> FluidCLI:
    jsonargparse.set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    register_resolvers()
    # Frozen parts (text encoder, tokenizer, EMA copy) stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # omegaconf+ resolves ${...} after command-line overrides, so interpolations follow them.
    return FluidCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"default_root_dir": "runs", "plugins": [{"class_path": ATOMIC_CHECKPOINT_IO}]},
        args=args,
        run=run,
    )


def usage() -> str:
    width = max(map(len, [*LIGHTNING_COMMANDS, *COMMANDS]))
    lines = [__doc__.strip(), "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}  {module.HELP}" for name, module in COMMANDS.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a log file shows lines as they are printed
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name = argv[0]
    if not name.startswith("-") and name not in LIGHTNING_COMMANDS and name not in COMMANDS:
        sys.exit(f"fluid_lightning: unknown command {name!r}; choose from "
                 f"{', '.join([*LIGHTNING_COMMANDS, *COMMANDS])} (--help lists what each does)")
    try:
        if name in COMMANDS:
            parser = argparse.ArgumentParser(prog=f"fluid_lightning {name}", description=COMMANDS[name].HELP)
            COMMANDS[name].add_arguments(parser)
            ns = parser.parse_args(argv[1:])
            ns.run(ns)
        else:
            lightning_cli(None if args is None else argv)
    except (OSError, ValueError) as err:  # bad input: the message names the fix; the traceback adds nothing
        if os.environ.get("FLUID_LIGHTNING_TRACEBACK") or (name not in COMMANDS and not isinstance(
                err, CheckpointError)):
            raise
        sys.exit(f"fluid_lightning {name}: error: {err}")


if __name__ == "__main__":
    main()
