"""How a generator is sampled: one settings object passed from the command line and YAML through the
pipeline, the module and the callbacks, and the one function that turns prompts into images.

    settings = SamplingSettings(steps=32, cfg=3.0, temperature=0.9)
    images = generate_images(generator, tokenizer, text_encoder, prompts, settings)

In YAML it is a mapping (``model.init_args.sampling: {steps: 32, cfg: 3.0}``, or a callback's
``sampling:``); on the command line of ``sample`` and ``evaluate`` it is ``--steps --cfg
--cfg-schedule --temperature --top-k --seed --no-kv-cache`` (``commands/common.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .models.diffusion import DIFFUSION_SAMPLERS, TIMESTEP_SPACINGS
from .models.generator import CFG_SCHEDULES, FluidGenerator
from .models.summary import dtype_of


@dataclass(frozen=True)
class SamplingSettings:
    """``steps``: random order reveals the tokens over this many steps (capped at the token count);
    raster order always takes one step per token. ``cfg``: classifier-free guidance scale (1 = off);
    ``cfg_schedule``: ``linear`` ramps it from 1 with the fraction of tokens revealed (MAR),
    ``constant`` keeps it. ``temperature`` scales the diffusion noise of every step (continuous) or
    divides the logits (discrete; 0 = argmax). ``top_k``: discrete tokens only. ``seed``: the same
    seed gives the same images (None: draw from the global random stream). ``kv_cache``: raster
    order reuses keys/values (the same tokens, faster).

    Continuous tokens only: ``diffusion_sampler`` is ``ddpm`` (ancestral, MAR's) or a fewer-step ODE
    solver from diffusers (``ddim``, ``dpm++``), over ``diffusion_steps`` timesteps (None: the head's
    ``diffusion_steps``) spaced as ``timestep_spacing`` says (``linspace``: both ends, MAR's;
    ``leading``: never the cosine schedule's singular last step; ``trailing``). ``detail_temperature``
    (None: ``temperature`` throughout) scales the noise of the last ``detail_fraction`` of each token's
    ``ddpm`` steps instead, the low-noise end where its fine detail is drawn: below 1 it draws smoother
    objects while the earlier steps, at ``temperature``, still decide what goes where. The ODE solvers add
    no noise after the start, so they ignore it, and a checkpoint that sets it still samples with them.

    Random order only (raster order ignores them): ``refine_passes`` redraws every token that many times
    more after the last step, ``refine_group`` tokens at a time, each given all the others, so the first
    tokens, drawn with nothing in view, come to agree with the rest (0: off, as in MAR and Fluid; two
    passes of 4 over the quickstart's 16 tokens make its sampling take 1.6x as long). ``refine_temperature``
    (None: the steps' ``temperature`` and ``detail_temperature``) is the passes' own temperature, on every
    diffusion step of a redrawn token: a token redrawn with all the others in view needs little noise."""

    steps: int = 64
    cfg: float = 3.0
    cfg_schedule: Literal[CFG_SCHEDULES] = "linear"
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = 0
    kv_cache: bool = True
    diffusion_steps: int | None = None
    diffusion_sampler: Literal[DIFFUSION_SAMPLERS] = "ddpm"
    timestep_spacing: Literal[TIMESTEP_SPACINGS] = "leading"
    detail_temperature: float | None = None
    detail_fraction: float = 0.25
    refine_passes: int = 0
    refine_group: int = 4
    refine_temperature: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampling steps must be at least 1, got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.detail_temperature is not None and self.detail_temperature < 0:
            raise ValueError(f"detail_temperature must be >= 0 (or null), got {self.detail_temperature}")
        if not 0.0 < self.detail_fraction <= 1.0:
            raise ValueError(f"detail_fraction must be in (0, 1], got {self.detail_fraction}")
        if self.refine_passes < 0:
            raise ValueError(f"refine_passes must be >= 0 (0: off), got {self.refine_passes}")
        if self.refine_group < 1:
            raise ValueError(f"refine_group must be at least 1, got {self.refine_group}")
        if self.refine_temperature is not None and self.refine_temperature < 0:
            raise ValueError(f"refine_temperature must be >= 0 (or null), got {self.refine_temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or null), got {self.top_k}")
        if self.diffusion_steps is not None and self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be at least 1 (or null), got {self.diffusion_steps}")
        for name, choices in (("cfg_schedule", CFG_SCHEDULES), ("diffusion_sampler", DIFFUSION_SAMPLERS),
                              ("timestep_spacing", TIMESTEP_SPACINGS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}")

    def replace(self, **changes) -> SamplingSettings:
        return dataclasses.replace(self, **changes)

    def rng(self, device: torch.device | str) -> torch.Generator | None:
        """A generator seeded with ``seed`` on ``device`` (None without a seed)."""
        return None if self.seed is None else torch.Generator(device).manual_seed(self.seed)


@torch.no_grad()
def generate_images(generator: FluidGenerator, tokenizer: nn.Module, text_encoder: nn.Module, prompts: list[str],
                    settings: SamplingSettings, rng: torch.Generator | None = None, progress: bool = False,
                    on_step: Callable[[Tensor, Tensor], None] | None = None) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] for the prompts: text features → tokens → pixels.

    ``rng`` carries one random stream through several calls (a batch loop); without it the call uses a
    fresh one from ``settings.seed``. The parts may differ in dtype (under bf16-true the EMA copy
    stays float32): text and tokens are cast to each part's. ``on_step(tokens, still_masked)``: see
    `FluidGenerator.sample`."""
    device = next(generator.parameters()).device
    rng = rng if rng is not None else settings.rng(device)
    was_training = generator.training
    generator.eval()
    try:
        text, text_mask = text_encoder(list(prompts))
        tokens = generator.sample(
            text.to(dtype_of(generator)), text_mask, steps=settings.steps, cfg=settings.cfg,
            cfg_schedule=settings.cfg_schedule, temperature=settings.temperature, top_k=settings.top_k,
            kv_cache=settings.kv_cache, rng=rng, progress=progress, diffusion_steps=settings.diffusion_steps,
            diffusion_sampler=settings.diffusion_sampler, timestep_spacing=settings.timestep_spacing, on_step=on_step,
            detail_temperature=settings.detail_temperature, detail_fraction=settings.detail_fraction,
            refine_passes=settings.refine_passes, refine_group=settings.refine_group,
            refine_temperature=settings.refine_temperature,
        )
        images = tokenizer.decode(tokens.to(dtype_of(tokenizer)) if tokens.is_floating_point() else tokens)
    finally:
        generator.train(was_training)
    return ((images.float() + 1) / 2).clamp(0, 1)
