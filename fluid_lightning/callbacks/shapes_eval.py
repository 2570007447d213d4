"""ShapesEvalCallback: GenEval-style scores of the shapes world during training.

Every N optimizer steps (and at the end of fit) it samples the evaluation prompts with
``pl_module.log_images`` (EMA weights) and scores the images with the shapes evaluator,
logging ``shapes/<tag>`` and ``shapes/overall`` (GenEval's mean over tags). Every rank
samples every prompt (under FSDP the forward is a collective); rank 0 scores and
broadcasts, so ``trainer.callback_metrics["shapes/overall"]`` agrees everywhere and a
ModelCheckpoint can monitor it.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from fluid_lightning.data.shapes import evaluation_suite, geneval_metadata
from fluid_lightning.evaluation.shapes_eval import read_metadata, score_images, summarize
from fluid_lightning.pipeline import to_pil

from .periodic import PeriodicCallback, publish_metrics


class ShapesEvalCallback(PeriodicCallback):
    def __init__(self, metadata: str | None = None, per_prompt: int = 1, every_n_steps: int = 1000,
                 on_fit_end: bool = True, max_prompts: int | None = None, batch_size: int = 64,
                 num_steps: int = 32, cfg: float = 3.0, temperature: float = 1.0, seed: int = 0,
                 out_file: str | None = None):
        """``metadata``: a GenEval JSONL (``evaluation_metadata.jsonl`` from `data shapes`); None uses
        ``evaluation_suite()`` (all six tags, held-out prompts included). A path that does not exist
        is reported once and the callback stays off; training goes on. ``max_prompts``: evaluate
        the first N records only (quick looks). ``out_file``: per-image results as JSONL, rewritten
        at every evaluation (rank 0)."""
        super().__init__(every_n_steps, on_fit_end)
        self.metadata_path, self.per_prompt = metadata, per_prompt
        self.max_prompts, self.batch_size = max_prompts, batch_size
        self.sample_kwargs = {"num_steps": num_steps, "cfg": cfg, "temperature": temperature}
        self.seed, self.out_file = seed, out_file
        self.records: list[dict] | None = None
        self._disabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.records is not None or self._disabled:
            return
        if not hasattr(pl_module, "log_images"):
            return self._disable(f"{type(pl_module).__name__} has no log_images(prompts, ...)")
        if self.metadata_path is None:
            records = [geneval_metadata(spec) for spec in evaluation_suite()]
        elif not Path(self.metadata_path).is_file():
            return self._disable(f"no metadata file at {self.metadata_path} (write one with "
                                 "`python -m fluid_lightning data shapes --out DIR`, or pass metadata: null "
                                 "for the built-in evaluation suite)")
        else:
            records = read_metadata(self.metadata_path)
        self.records = records[: self.max_prompts] if self.max_prompts else records
        if not self.records:
            self._disable("the metadata holds no prompts")

    def _disable(self, why: str) -> None:
        rank_zero_warn(f"ShapesEvalCallback is off: {why}. Training continues without shapes scores.")
        self._disabled = True

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict | None:
        """Sample, score, log; returns the summary (see `summarize`), or None when off."""
        if self._disabled or not self.records:
            return None
        step = trainer.global_step
        records = [r for r in self.records for _ in range(self.per_prompt)]
        generator = torch.Generator(pl_module.device).manual_seed(self.seed)  # same noise every time
        images = []
        for start in range(0, len(records), self.batch_size):
            prompts = [r["prompt"] for r in records[start:start + self.batch_size]]
            images += to_pil(pl_module.log_images(prompts, generator=generator, **self.sample_kwargs))
        summary = None
        if trainer.is_global_zero:
            results = score_images(images, records)
            summary = summarize(results)
            if self.out_file:
                Path(self.out_file).parent.mkdir(parents=True, exist_ok=True)
                Path(self.out_file).write_text("".join(json.dumps({**r, "step": step}) + "\n" for r in results))
        summary = trainer.strategy.broadcast(summary, src=0)
        metrics = {f"shapes/{tag}": entry["accuracy"] for tag, entry in summary["tags"].items()}
        metrics["shapes/overall"] = summary["overall"]
        publish_metrics(trainer, metrics, step)
        return summary
