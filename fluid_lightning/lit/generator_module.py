"""GeneratorModule: trains a FluidGenerator on images (tokenized on the fly by a frozen tokenizer)
or on cached tokenizer latents, with captions encoded by a T5 text encoder (frozen unless asked)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
from typing import Any, Literal

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor, nn

from ..data.pixels import images_to_float
from ..models.generator import FluidGenerator
from ..models.text import T5TextEncoder
from ..models.tokenizers import ImageTokenizer
from ..parallel import gathered, is_sharded, parallelize, shard_text_encoder, shard_tokenizer
from ..sampling import SamplingSettings, generate_images
from .base import ModuleBase
from .ema import make_ema, update_ema
from .rng_state import capture_rank_rng_states, restore_rank_rng_state, seed_rank


class GeneratorModule(ModuleBase):
    SUBMODULES = ("generator", "tokenizer", "text_encoder")

    def __init__(
        self,
        generator: FluidGenerator,
        tokenizer: ImageTokenizer,
        text_encoder: T5TextEncoder,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.02,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        ema_decay: float | None = 0.9999,
        sampling: SamplingSettings = SamplingSettings(),  # noqa: B008 (frozen: a shared default is safe)
        optimizer: Literal["adamw", "adamw8bit"] = "adamw",
        activation_checkpointing: bool = False,
        compile: bool = False,
        shard_text_encoder: bool = False,
        shard_tokenizer: bool = False,
        cache_tokens: bool = False,
    ):
        """``lr`` is absolute (MAR: 1e-4 × global_batch / 256). Weight decay skips biases, norms,
        embeddings and learned tokens. ``ema_decay=None`` turns the EMA copy off; otherwise its
        decay ramps up as min(ema_decay, (1+t)/(10+t)) so short runs still get a useful average.
        ``sampling``: how ``predict``, ``log_images`` and the pipeline built from this module sample,
        unless a caller passes its own settings.

        Scaling switches (applied in ``configure_model`` by ``fluid_lightning.parallel.parallelize``):
        ``activation_checkpointing`` recomputes each block in backward; ``compile`` compiles each
        transformer block and each residual block of the diffusion head; under
        ``ModelParallelStrategy`` the generator and its EMA are sharded with FSDP2 and
        ``shard_text_encoder`` / ``shard_tokenizer`` also shard the frozen T5 / VAE.
        ``optimizer="adamw8bit"`` uses bitsandbytes' ``AdamW8bit`` (single process or DDP only: it
        cannot step FSDP2's DTensor parameters).

        ``cache_tokens``: keep the frozen tokenizer's tokens of every training image in memory by the
        batch's ``key`` and reuse them when the key comes again, so each image is encoded once per
        run. Only for data whose key always names the same pixels (the shapes world), never for
        random crops or augmentations."""
        super().__init__()
        self.save_hyperparameters(ignore=self.unsaved_arguments())
        if isinstance(self.hparams.get("sampling"), SamplingSettings):  # plain data in checkpoints, never objects
            self.hparams["sampling"] = dataclasses.asdict(sampling)
        self.sampling = sampling if isinstance(sampling, SamplingSettings) else SamplingSettings(**sampling)
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be 'adamw' or 'adamw8bit', got {optimizer!r}")
        if optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("optimizer=adamw8bit needs bitsandbytes: pip install -e '.[bnb]'")
        _check_compatible(generator, tokenizer, text_encoder)
        self.generator = generator
        self.tokenizer = tokenizer.requires_grad_(False).eval()
        self.text_encoder = text_encoder
        self.ema = make_ema(generator) if ema_decay else None  # float32 whatever the precision (lit/base.py)
        self._token_cache: dict[str, Tensor] | None = {} if cache_tokens else None
        self._parallelized = False
        # Steps skipped because the loss was NaN/inf (all ranks agree); read by NonFiniteLossGuard.
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0

    def train(self, mode: bool = True) -> GeneratorModule:
        super().train(mode)
        self.tokenizer.eval()
        if self.ema is not None:
            self.ema.eval()
        return self

    @property
    def sampling_generator(self) -> FluidGenerator:
        """The weights used for sampling and evaluation: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.generator

    def configure_model(self) -> None:
        """Called by Lightning on every rank before the optimizer is built. Under
        ``ModelParallelStrategy`` ``self.device_mesh`` is set and the generator (and the EMA, the
        same way, so the averaging is shard-local) are sharded with FSDP2; otherwise only activation
        checkpointing / compile apply. The sharding itself lives in ``parallel.py``."""
        if self._parallelized:  # Lightning may call this more than once (e.g. fit then validate)
            return
        self._parallelized = True
        mesh = self.device_mesh["data_parallel"] if self.device_mesh is not None else None
        hp = self.hparams
        parallelize(self.generator, mesh, activation_checkpointing=hp.activation_checkpointing, compile=hp.compile)
        if self.ema is not None:
            parallelize(self.ema, mesh)  # no backward through the EMA: no checkpointing or compile
        if mesh is not None and hp.shard_text_encoder:
            shard_text_encoder(self.text_encoder, mesh)
        if mesh is not None and hp.shard_tokenizer:
            shard_tokenizer(self.tokenizer, mesh)

    # ---- steps ---------------------------------------------------------------------------------
    def _tokens(self, batch: dict[str, Any]) -> Tensor:
        if "latent" in batch:
            return batch["latent"]
        if "image" in batch:
            if self._token_cache is None or "key" not in batch or not self.training:
                return self._encode(batch["image"])
            keys, cache = list(batch["key"]), self._token_cache
            new = [i for i, key in enumerate(keys) if key not in cache]
            if new:
                cache.update(zip((keys[i] for i in new), self._encode(batch["image"][new]).cpu()))
            return torch.stack([cache[key] for key in keys]).to(batch["image"].device)
        raise KeyError(f"a batch needs 'image' or 'latent' plus 'caption'; got keys {sorted(batch)}")

    @torch.no_grad()
    def _encode(self, images: Tensor) -> Tensor:
        return self.tokenizer.encode(images_to_float(images))  # uint8 pixels or [-1, 1]

    def encode_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(tokens, text features, text mask) of a batch: what the generator's loss reads."""
        text, text_mask = self.text_encoder(batch["caption"])
        return self._tokens(batch), text, text_mask

    def _loss(self, batch: dict[str, Any]) -> tuple[Tensor, int]:
        tokens, text, text_mask = self.encode_batch(batch)
        return self.generator(tokens, text, text_mask), tokens.shape[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        loss, b = self._loss(batch)
        # A NaN/inf loss on any rank skips the step on every rank (returning None skips backward and
        # the update; deciding together keeps DDP/FSDP collectives in step).
        bad = not bool(torch.isfinite(loss.detach()))
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            self.log("train/nonfinite_skipped", float(self.nonfinite_total), batch_size=b)
            return None
        self.nonfinite_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, b = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, b = self._loss(batch)
        self.log("test/loss", loss, batch_size=b, sync_dist=True)
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Images for the batch's captions; the seed depends on batch and rank, so reruns repeat."""
        seed = batch_idx * self.trainer.world_size + self.trainer.global_rank
        images = self.log_images(batch, self.sampling.replace(seed=seed))["samples"]
        return {"images": images, "caption": list(batch["caption"])}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Once per optimizer step (not per micro-batch), and before any callback's
        # on_train_batch_end: a checkpoint saved at step t must hold the EMA of step t, or a
        # resumed run would miss that update and drift from an uninterrupted one.
        if self.ema is not None:
            self.update_ema(self.trainer.global_step)

    def update_ema(self, step: int) -> None:
        update_ema(self.ema, self.generator, step, self.hparams.ema_decay)

    def setup(self, stage: str) -> None:
        seed_rank(self.trainer.global_rank)  # before any restore: a resumed run then takes its saved streams

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning saves no RNG state; every rank's goes in, so a resumed run continues each stream.
        checkpoint["rng_states"] = capture_rank_rng_states()
        checkpoint["nonfinite_total"] = self.nonfinite_total

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_total = checkpoint.get("nonfinite_total", 0)
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        restore_rank_rng_state(checkpoint, rank, world_size)

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        # The text encoder's parameters only require grad when it is trainable.
        for module in itertools.chain(self.generator.modules(), self.text_encoder.modules()):
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(param)
        hp = self.hparams
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "adamw8bit":
            if is_sharded(self.generator):
                raise ValueError("optimizer=adamw8bit cannot step FSDP2 (DTensor) parameters; use optimizer=adamw or DDP")
            import bitsandbytes as bnb

            optimizer = bnb.optim.AdamW8bit(groups, lr=hp.lr, betas=tuple(hp.betas))
        else:
            # Fused: one kernel for all parameters instead of a loop over each tensor, which is ~10% of a
            # quickstart step on CPU (benchmarks/RESULTS.md, "Faster steps"). Not for FSDP2's DTensors, nor
            # under Lightning's mixed-precision plugin, which refuses to clip a fused optimizer's gradients.
            mixed = self._trainer is not None and isinstance(self.trainer.precision_plugin, MixedPrecision)
            optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas),
                                          fused=not (mixed or is_sharded(self.generator)))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        schedule = lr_lambda(hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        # "name": the lr_monitor callback logs it as train/lr, beside the loss
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    # ---- for callbacks -------------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], sampling: SamplingSettings | None = None,
                   rng: torch.Generator | None = None) -> dict[str, Tensor]:
        """{"samples": images [B, 3, H, W] in [0, 1] for ``batch["caption"]``}, sampled with the EMA
        weights and ``sampling`` (default: the module's). Every rank must call it under FSDP2."""
        with gathered(self.sampling_generator):  # FSDP2: sampling bypasses forward; gather the root
            images = generate_images(self.sampling_generator, self.tokenizer, self.text_encoder,
                                     list(batch["caption"]), sampling or self.sampling, rng)
        return {"samples": images}


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_ratio: float):
    """Linear warmup to 1, then constant or cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _check_compatible(generator: FluidGenerator, tokenizer: ImageTokenizer, text_encoder: T5TextEncoder) -> None:
    prefix = "model.init_args.generator.init_args"
    if generator.grid_size != tokenizer.grid_size:
        raise ValueError(
            f"generator.grid_size={generator.grid_size} but the tokenizer makes a {tokenizer.grid_size}x"
            f"{tokenizer.grid_size} grid; set {prefix}.grid_size: {tokenizer.grid_size}"
        )
    if (generator.token_kind == "discrete") != tokenizer.discrete:
        kind = "discrete" if tokenizer.discrete else "continuous"
        raise ValueError(f"generator.token_kind={generator.token_kind!r} but the tokenizer is {kind}; "
                         f"set {prefix}.token_kind: {kind}")
    if not tokenizer.discrete and generator.token_dim != tokenizer.token_dim:
        raise ValueError(
            f"generator.token_dim={generator.token_dim} but the tokenizer makes {tokenizer.token_dim}-dim tokens; "
            f"set {prefix}.token_dim: {tokenizer.token_dim}"
        )
    if tokenizer.discrete and generator.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"generator.vocab_size={generator.vocab_size} but the tokenizer has {tokenizer.vocab_size} codes; "
            f"set {prefix}.vocab_size: {tokenizer.vocab_size}"
        )
    if generator.text.proj.in_features != text_encoder.dim:
        raise ValueError(
            f"generator.text_dim={generator.text.proj.in_features} but the text encoder outputs {text_encoder.dim}; "
            f"set {prefix}.text_dim: {text_encoder.dim}"
        )
