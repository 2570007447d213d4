"""What the default CaptionUse callback costs a run: one validation with it against one without, taking turns.

    OMP_NUM_THREADS=2 python benchmarks/caption_use_cost.py runs/quickstart/checkpoints/last.ckpt --rounds 5

Builds the quickstart's datamodule, loads the checkpoint's module and times `trainer.validate` over the
quickstart's 4 validation batches with and without CaptionUse, alternating, and prints the median extra
seconds per validation; multiply by the validations in a run (the quickstart: 3) and divide by its wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L

from fluid_lightning.callbacks.caption_use import CaptionUse
from fluid_lightning.checkpointing import load
from fluid_lightning.data.shapes import ShapesDataModule
from fluid_lightning.lit.generator_module import GeneratorModule


def validate_seconds(module: GeneratorModule, data: ShapesDataModule, callbacks: list, batches: int) -> float:
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, limit_val_batches=batches,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.validate(module, data, verbose=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    ns = parser.parse_args()
    module = load(GeneratorModule, ns.ckpt)
    data = ShapesDataModule(image_size=module.tokenizer.image_size, num_train=32, batch_size=32)
    validate_seconds(module, data, [], ns.batches)  # warm-up
    plain, measured = [], []
    for i in range(ns.rounds):
        for callbacks, times in (([], plain), ([CaptionUse()], measured))[:: 1 if i % 2 == 0 else -1]:
            times.append(validate_seconds(module, data, callbacks, ns.batches))
    extra = [m - p for m, p in zip(measured, plain)]
    print(f"validation without CaptionUse {statistics.median(plain):.2f} s, with {statistics.median(measured):.2f} s: "
          f"{statistics.median(extra):.2f} s more per validation (median of {ns.rounds} turns)")


if __name__ == "__main__":
    main()
