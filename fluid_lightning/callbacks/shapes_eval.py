"""ShapesEvalCallback: GenEval-style scores of the shapes world during training.

Every N optimizer steps (and at the end of fit) it samples the evaluation prompts with the module's
EMA weights and scores the images with the shapes scorer, logging ``shapes/<tag>`` and
``shapes/overall`` (GenEval's mean over tags). Every rank samples every prompt (under FSDP the
forward is a collective); rank 0 scores and broadcasts, so ``trainer.callback_metrics["shapes/overall"]``
agrees everywhere and a ModelCheckpoint can monitor it.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from ..data.pixels import to_pil
from ..data.shapes import evaluation_suite, geneval_metadata
from ..data.vocabulary import TAGS
from ..evaluation.geneval import read_metadata, summarize
from ..evaluation.shapes import score_images
from ..sampling import SamplingSettings
from .periodic import ImageCallback, publish_metrics


class ShapesEvalCallback(ImageCallback):
    def __init__(self, metadata: str | None = None, min_per_tag: int = 16, per_prompt: int = 1,
                 every_n_steps: int = 1000,
                 on_fit_end: bool = True, max_prompts: int | None = None, sampling: SamplingSettings | None = None,
                 batch_size: int = 64, out_file: str | None = None, hp_metric: bool = True,
                 tags: list[str] | None = None):
        """``metadata``: a GenEval JSONL (``evaluation_metadata.jsonl`` from `data shapes`); None uses
        ``evaluation_suite(min_per_tag)`` (all six tags, held-out prompts included, each tag's prompts
        repeated to ``min_per_tag`` records: 148 at 16, against ~1000 images in `evaluate generate`).
        A path that does not exist is reported once and the callback stays off; training goes on. ``max_prompts``: evaluate
        the first N records only (quick looks). ``out_file``: per-image results as JSONL, rewritten
        at every evaluation (rank 0). ``hp_metric``: the final ``shapes/overall`` becomes the run's
        ``hp_metric``, so TensorBoard's HPARAMS tab compares runs by it. ``tags``: score only these
        GenEval tags (a ladder rung that trains on some of them); None scores all."""
        super().__init__(every_n_steps, on_fit_end, sampling, batch_size)
        self.metadata_path, self.per_prompt, self.max_prompts = metadata, per_prompt, max_prompts
        self.min_per_tag = min_per_tag
        self.out_file, self.hp_metric = out_file, hp_metric
        unknown = set(tags or ()) - set(TAGS)
        if unknown:
            raise ValueError(f"ShapesEvalCallback tags must be among {', '.join(TAGS)}; got {sorted(unknown)}")
        self.tags = tuple(tags) if tags else None
        self.records: list[dict] | None = None
        self.last_summary: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.records is not None or self.off_because is not None:
            return
        if self.metadata_path is None:
            records = [geneval_metadata(spec) for spec in evaluation_suite(min_per_tag=self.min_per_tag)]
        elif not Path(self.metadata_path).is_file():
            return self.switch_off(f"no metadata file at {self.metadata_path} (write one with "
                                   "`python -m fluid_lightning data shapes --out DIR`, or pass metadata: null "
                                   "for the built-in evaluation suite)")
        else:
            records = read_metadata(self.metadata_path)
        if self.tags is not None:
            records = [r for r in records if r["tag"] in self.tags]
        self.records = records[: self.max_prompts] if self.max_prompts else records
        if not self.records:
            self.switch_off("the metadata holds no prompts" + (f" with tags {list(self.tags)}" if self.tags else ""))

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict | None:
        """Sample, score, log; returns the summary (see `summarize`), or None when off."""
        step = trainer.global_step
        records = [r for r in self.records for _ in range(self.per_prompt)]
        images = self.prompt_images(pl_module, [r["prompt"] for r in records])
        if self.off_because is not None:
            return None
        summary = None
        if trainer.is_global_zero:
            results = score_images(to_pil(images), records)
            summary = summarize(results)
            if self.out_file:
                Path(self.out_file).parent.mkdir(parents=True, exist_ok=True)
                Path(self.out_file).write_text("".join(json.dumps({**r, "step": step}) + "\n" for r in results))
        summary = trainer.strategy.broadcast(summary, src=0)
        metrics = {f"shapes/{tag}": entry["accuracy"] for tag, entry in summary["tags"].items()}
        metrics["shapes/overall"] = summary["overall"]
        publish_metrics(trainer, metrics, step)
        self.last_summary = summary
        return summary

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the final evaluation, unless this step was just scored
        if self.hp_metric and self.last_summary is not None and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams(pl_module.hparams, {"hp_metric": self.last_summary["overall"]},
                                       trainer.global_step)
