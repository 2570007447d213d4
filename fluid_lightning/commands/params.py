"""`params`: parameter counts of model configs, built on the meta device (no memory, no weights).

    python -m fluid_lightning params conf/model/fluid.yaml conf/model/size/*.yaml
"""

from __future__ import annotations

import argparse

from ..config import load_generator_config
from ..models.summary import generator_param_counts

HELP = "parameter counts of model configs, built on the meta device"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", help="YAML files with model.init_args.generator")
    parser.add_argument("--with", dest="base", action="append", default=[],
                        help="config merged under each one (e.g. conf/model/fluid.yaml under a size)")
    parser.set_defaults(run=run)


def run(ns: argparse.Namespace) -> None:
    print(f"{'config':<40} {'transformer':>12} {'aligner':>10} {'head':>10} {'total':>12}")
    for path in ns.configs:
        counts = generator_param_counts(load_generator_config(path, ns.base))
        print(f"{path:<40} {human(counts['transformer']):>12} {human(counts['aligner']):>10} "
              f"{human(counts['head']):>10} {human(counts['total']):>12}")


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if unit != "K" else f"{n / size:.0f}{unit}"
    return str(n)
