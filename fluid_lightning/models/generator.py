"""The Fluid generator: a transformer over image tokens that reads text through cross-attention.

Two switches give the four variants compared in the Fluid paper:

- ``order="random"``: bidirectional attention; training masks a random subset of tokens (ratio from
  a truncated normal) and predicts them; sampling reveals tokens in a random order over K steps
  on a cosine schedule (MAR). ``order="raster"``: causal attention, teacher forcing from a start
  token, one token per step at sampling with a KV cache.
- ``token_kind="continuous"``: a per-token diffusion head; ``"discrete"``: logits + cross-entropy.

Random draws take ``rng``, a ``torch.Generator`` (None: the global stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import draws
from .heads import DiffusionHead, LogitsHead
from .text import TextAligner
from .transformer import Block, KVCache, init_weights, sincos_2d


def truncated_normal(
    n: int, mean: float, std: float, low: float, high: float, rng: torch.Generator | None, device
) -> Tensor:
    """Exact inverse-CDF sampling of N(mean, std²) restricted to [low, high]."""
    normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    lo, hi = normal.cdf(torch.tensor(low, dtype=torch.float64)), normal.cdf(torch.tensor(high, dtype=torch.float64))
    u = draws.uniform((n,), "cpu", rng, dtype=torch.float64)
    x = normal.icdf(lo + (hi - lo) * u).clamp(low, high)
    return x.float().to(device)


CFG_SCHEDULES = ("linear", "constant")


def cosine_mask_schedule(num_tokens: int, steps: int) -> list[int]:
    """How many tokens stay masked after each step: ⌊N·cos(π/2·(k+1)/K)⌋, clamped so every step
    reveals at least one token and only the last step reveals the rest (MAR)."""
    remaining, counts = num_tokens, []
    for k in range(steps):
        if k == steps - 1:
            n_next = 0
        else:
            n_next = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))
            n_next = max(1, min(remaining - 1, n_next)) if remaining > 1 else 0
        counts.append(n_next)
        remaining = n_next
        if remaining == 0:
            break
    return counts


class FluidGenerator(nn.Module):
    def __init__(
        self,
        token_kind: Literal["continuous", "discrete"] = "continuous",
        order: Literal["random", "raster"] = "random",
        grid_size: int = 16,
        token_dim: int = 16,
        vocab_size: int = 8192,
        width: int = 1024,
        depth: int = 16,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        text_dim: int = 4096,
        aligner_depth: int = 6,
        caption_dropout: float = 0.1,
        text_token_dropout: float = 0.0,
        mask_ratio_min: float = 0.7,
        mask_ratio_mean: float = 1.0,
        mask_ratio_std: float = 0.25,
        head_width: int = 1024,
        head_depth: int = 6,
        diffusion_batch_mul: int = 4,
        num_train_timesteps: int = 1000,
        diffusion_steps: int = 100,
        noise_schedule: str = "cosine",
        learn_sigma: bool = True,
        prediction_type: Literal["epsilon", "v"] = "epsilon",
        x0_loss_weight: float = 0.0,
        pooled_text: bool = False,
        neighbour_input: bool = False,
        text_positions: bool = False,
    ):
        """Sizes follow the constructor names; ``grid_size`` and ``token_dim``/``vocab_size``
        must match the tokenizer, ``text_dim`` the text encoder's output width.

        ``text_token_dropout``: in training, each caption token but the first is hidden from the model
        with this probability (on top of ``caption_dropout``, which hides whole captions), so it also
        learns what a colour word alone or a shape word alone asks for (0 in Fluid).

        ``x0_loss_weight`` (continuous tokens): adds that weight times the MSE of a linear read-out of
        each predicted token's condition against the token itself, a low-noise signal that teaches the
        transformer what a token's context implies; the diffusion head alone gets it only through
        its noisy per-timestep loss. 0 (MAR, Fluid) leaves it out.

        ``diffusion_steps``: the diffusion head's steps per token when sampling, unless the sampling
        settings say otherwise (``SamplingSettings.diffusion_steps``).

        ``pooled_text``: adds a learned projection of the mean of the aligned caption to every position's
        output, so the head reads the caption directly as well as through cross-attention (False in
        Fluid, whose head reads the transformer's output alone).

        ``neighbour_input`` (random order): every position's input also gets a learned 3×3 convolution of
        its revealed neighbours' embeddings, so a token still to predict sees the tokens around it from
        the first layer on, as a raster token sees the one before it; otherwise that comes through
        attention alone (False in Fluid and MAR).

        ``text_positions``: the text aligner adds a sin-cos embedding of each caption token's index, so it
        tells "a red circle and a blue square" from "a blue circle and a red square" even when the text
        encoder's features hardly carry word order, as a small random T5's do; a pretrained T5 has learned
        to carry it (False in Fluid)."""
        super().__init__()
        if token_kind not in ("continuous", "discrete"):
            raise ValueError(f"token_kind must be 'continuous' or 'discrete', got {token_kind!r}")
        if order not in ("random", "raster"):
            raise ValueError(f"order must be 'random' or 'raster', got {order!r}")
        if neighbour_input and order != "random":
            raise ValueError("neighbour_input needs order='random': a raster token may not read the tokens after it")
        if not 0.0 <= text_token_dropout < 1.0:
            raise ValueError(f"text_token_dropout must be in [0, 1), got {text_token_dropout}")
        if not 0.0 < mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {mask_ratio_min}")
        self.token_kind, self.order = token_kind, order
        self.grid_size, self.num_tokens = grid_size, grid_size * grid_size
        self.token_dim = token_dim if token_kind == "continuous" else None
        self.vocab_size = vocab_size if token_kind == "discrete" else None
        self.width, self.depth = width, depth
        self.caption_dropout = caption_dropout
        self.text_token_dropout = text_token_dropout
        self.mask_ratio = (mask_ratio_min, mask_ratio_mean, mask_ratio_std)
        self.x0_loss_weight = x0_loss_weight if token_kind == "continuous" else 0.0

        self.text = TextAligner(text_dim, width, aligner_depth, num_heads, mlp_ratio, dropout, text_positions)
        self.embed = nn.Linear(token_dim, width) if token_kind == "continuous" else nn.Embedding(vocab_size, width)
        # Random order: what a token still to predict looks like. Raster: what the first position reads.
        setattr(self, self._learned_token_name, nn.Parameter(torch.zeros(1, 1, width)))
        self.pos_embed = nn.Parameter(sincos_2d(grid_size, width)[None])  # learnable, 2-D initialised
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(init_weights)
        nn.init.normal_(self._learned_token, std=0.02)
        self.register_load_state_dict_pre_hook(_rename_special_token)
        if token_kind == "continuous":
            self.head = DiffusionHead(
                token_dim, width, head_width, head_depth, num_train_timesteps, diffusion_steps,
                noise_schedule, diffusion_batch_mul, learn_sigma, prediction_type,
            )
        else:
            self.head = LogitsHead(width, vocab_size)
        self.x0_readout = nn.Linear(width, token_dim) if self.x0_loss_weight else None
        self.pooled_text = nn.Linear(width, width) if pooled_text else None
        if self.pooled_text is not None:  # starts as the plain model
            nn.init.zeros_(self.pooled_text.weight)
            nn.init.zeros_(self.pooled_text.bias)
        # No bias: with nothing revealed it adds nothing, so blank_conditions needs no change.
        self.neighbour_mix = nn.Conv2d(width, width, 3, padding=1, bias=False) if neighbour_input else None
        if self.neighbour_mix is not None:  # starts as the plain model
            nn.init.zeros_(self.neighbour_mix.weight)

    @property
    def _learned_token_name(self) -> str:
        return "mask_token" if self.order == "random" else "start_token"

    @property
    def _learned_token(self) -> nn.Parameter:
        return getattr(self, self._learned_token_name)

    # ---- shared pieces -------------------------------------------------------------------------
    def encode_text(self, text: Tensor, text_mask: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.text(text, text_mask, drop)

    def _run(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor, cache: KVCache | None = None) -> Tensor:
        causal = self.order == "raster"
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, ctx_mask, causal=causal, cache=None if cache is None else cache.layers[i])
        if self.pooled_text is None:
            return self.norm(x)
        weights = ctx_mask.to(ctx.dtype)[..., None]
        pooled = (ctx * weights).sum(1) / weights.sum(1).clamp_min(1)
        return self.norm(x) + self.pooled_text(pooled)[:, None]

    def _check_tokens(self, tokens: Tensor) -> None:
        if self.token_kind == "continuous":
            ok = tokens.ndim == 3 and tokens.shape[1:] == (self.num_tokens, self.token_dim)
            want = f"[B, {self.num_tokens}, {self.token_dim}] float"
        else:
            ok = tokens.ndim == 2 and tokens.shape[1] == self.num_tokens and not tokens.is_floating_point()
            want = f"[B, {self.num_tokens}] long"
        if not ok:
            raise ValueError(
                f"generator expects tokens {want}, got {tuple(tokens.shape)} {tokens.dtype}; make grid_size and "
                "token_dim/vocab_size match the tokenizer (cached latents: set data.init_args.image_size to the size "
                "they were encoded at)"
            )

    def random_mask(self, batch: int, device, rng: torch.Generator | None = None) -> Tensor:
        """[B, N] bool, True = masked (to predict). Each sample gets its own random order and its
        own ratio from the truncated normal; at least one token is masked."""
        low, mean, std = self.mask_ratio
        ratio = truncated_normal(batch, mean, std, low, 1.0, rng, device)
        n_masked = torch.ceil(ratio * self.num_tokens).clamp(1, self.num_tokens).long()
        scores = draws.uniform((batch, self.num_tokens), device, rng)
        rank = scores.argsort(dim=1).argsort(dim=1)  # position of each token in its sample's order
        return rank < n_masked[:, None]

    # ---- training ------------------------------------------------------------------------------
    def forward(
        self, tokens: Tensor, text: Tensor, text_mask: Tensor, rng: torch.Generator | None = None
    ) -> Tensor:
        """Training loss for a batch of target tokens and their (frozen) text features."""
        self._check_tokens(tokens)
        b, device = tokens.shape[0], tokens.device
        drop = None
        if self.training and self.caption_dropout > 0:
            drop = draws.uniform((b,), device, rng) < self.caption_dropout
        if self.training and self.text_token_dropout > 0:
            hidden = draws.uniform(text_mask.shape, device, rng) < self.text_token_dropout
            hidden[:, 0] = False  # a caption never loses every token
            text_mask = text_mask & ~hidden
        ctx, ctx_mask = self.encode_text(text, text_mask, drop)
        if self.order == "random":
            mask = self.random_mask(b, device, rng)
            z = self.conditions(tokens, mask, ctx, ctx_mask)
            return self._loss(tokens[mask], z[mask], rng)
        start = self.start_token.expand(b, 1, -1).to(ctx.dtype)
        x = torch.cat([start, self.embed(tokens[:, :-1]).to(ctx.dtype)], dim=1)
        z = self._run(x + self.pos_embed, ctx, ctx_mask)
        return self._loss(tokens.flatten(0, 1), z.flatten(0, 1), rng)

    def _loss(self, targets: Tensor, z: Tensor, rng: torch.Generator | None) -> Tensor:
        loss = self.head.loss(targets, z, rng=rng)
        if self.x0_readout is not None:
            loss = loss + self.x0_loss_weight * F.mse_loss(self.x0_readout(z).float(), targets.float())
        return loss

    def conditions(self, tokens: Tensor, masked: Tensor, ctx: Tensor, ctx_mask: Tensor,
                   cache: KVCache | None = None) -> Tensor:
        """Random order: the head's condition [B, N, width] for every position, given the tokens where
        ``masked`` [B, N] is False (the rest read as the mask token) and the aligned text."""
        embedded = self.embed(tokens).to(ctx.dtype)
        x = torch.where(masked[..., None], self.mask_token.to(ctx.dtype), embedded)
        if self.neighbour_mix is not None:
            x = x + self._revealed_neighbours(embedded.masked_fill(masked[..., None], 0.0))
        return self._run(x + self.pos_embed, ctx, ctx_mask, cache)

    def _revealed_neighbours(self, revealed: Tensor) -> Tensor:
        b, g = revealed.shape[0], self.grid_size
        grid = revealed.transpose(1, 2).reshape(b, self.width, g, g)
        return self.neighbour_mix(grid).flatten(2).transpose(1, 2)

    def blank_conditions(self, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        """The head's condition where nothing is revealed yet, from the aligned text alone: [B, N, width]
        for every position of a random order (all masked), [B, 1, width] for a raster order's first."""
        b = ctx.shape[0]
        if self.order == "random":
            x = self.mask_token.to(ctx.dtype).expand(b, self.num_tokens, -1)
            return self._run(x + self.pos_embed, ctx, ctx_mask)
        x = self.start_token.to(ctx.dtype).expand(b, 1, -1)
        return self._run(x + self.pos_embed[:, :1], ctx, ctx_mask)

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        text: Tensor,
        text_mask: Tensor,
        steps: int = 64,
        cfg: float = 1.0,
        cfg_schedule: Literal[CFG_SCHEDULES] = "linear",
        temperature: float = 1.0,
        top_k: int | None = None,
        kv_cache: bool = True,
        guidance: bool | None = None,
        rng: torch.Generator | None = None,
        progress: bool = False,
        diffusion_steps: int | None = None,
        diffusion_sampler: str = "ddpm",
        timestep_spacing: str = "leading",
        on_step: Callable[[Tensor, Tensor], None] | None = None,
        detail_temperature: float | None = None,
        detail_fraction: float = 0.25,
        refine_passes: int = 0,
        refine_group: int = 4,
        refine_temperature: float | None = None,
    ) -> Tensor:
        """Generate tokens for B text conditions.

        ``cfg`` is the guidance scale; guidance doubles the batch with the null condition and is on
        whenever ``cfg != 1`` unless ``guidance`` says otherwise. The linear schedule ramps the scale
        from 1 to ``cfg`` with the fraction of tokens revealed (MAR). ``steps`` applies to
        random order (capped at N); raster order always takes N steps. ``diffusion_*``, ``timestep_spacing``
        and ``detail_*`` choose how the diffusion head samples each token (`DiffusionHead.sample`).
        ``on_step(tokens, still_masked)`` sees the tokens after every step (to watch a sample form).

        ``refine_passes`` (random order; raster order, whose tokens may not read the ones after them,
        ignores it): after the last step, each pass redraws every token once more, ``refine_group`` at a
        time in a fresh random order, each given all the others at the full guidance scale. The first
        tokens were drawn with nothing else in view; a pass lets them agree with the image that grew
        around them (a deviation from MAR and Fluid, which never redraw a token; 0 turns it off).
        ``refine_temperature`` (None: as the steps) is the passes' temperature, on every diffusion step of
        a redrawn token (its ``detail_temperature`` then does not apply).
        """
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {', '.join(map(repr, CFG_SCHEDULES))}, got {cfg_schedule!r}")
        if refine_passes < 0 or refine_group < 1:
            raise ValueError(f"refine_passes must be >= 0 and refine_group >= 1, got {refine_passes} and {refine_group}")
        if refine_temperature is not None and refine_temperature < 0:
            raise ValueError(f"refine_temperature must be >= 0 (or None), got {refine_temperature}")
        guided = cfg != 1.0 if guidance is None else guidance
        b = text.shape[0]
        ctx, ctx_mask = self.encode_text(text, text_mask)
        if guided:
            null_ctx, null_mask = self.encode_text(text, text_mask, torch.ones(b, dtype=torch.bool, device=text.device))
            ctx, ctx_mask = torch.cat([ctx, null_ctx]), torch.cat([ctx_mask, null_mask])
        n = self.num_tokens
        if self.token_kind == "continuous":
            out = torch.zeros(b, n, self.token_dim, device=text.device, dtype=ctx.dtype)
        else:
            out = torch.zeros(b, n, dtype=torch.long, device=text.device)

        def scale(revealed: int) -> float:
            return 1.0 + (cfg - 1.0) * revealed / n if cfg_schedule == "linear" else cfg

        def predict(z: Tensor, revealed: int, refining: bool = False) -> Tensor:
            own = refining and refine_temperature is not None
            return self.head.sample(
                z, temperature=refine_temperature if own else temperature, cfg=scale(revealed) if guided else None,
                rng=rng, top_k=top_k, diffusion_steps=diffusion_steps, diffusion_sampler=diffusion_sampler,
                timestep_spacing=timestep_spacing, detail_temperature=None if own else detail_temperature,
                detail_fraction=detail_fraction,
            )

        if self.order == "random":
            return self._sample_random(out, ctx, ctx_mask, steps, guided, predict, rng, progress, on_step,
                                       refine_passes, refine_group)
        return self._sample_raster(out, ctx, ctx_mask, kv_cache, guided, predict, progress, on_step)

    def _sample_random(self, out, ctx, ctx_mask, steps, guided, predict, rng, progress, on_step, passes, group) -> Tensor:
        b, n = out.shape[:2]
        scores = draws.uniform((b, n), out.device, rng)
        rank = scores.argsort(dim=1).argsort(dim=1)
        schedule = cosine_mask_schedule(n, min(steps, n))
        bar = tqdm(total=len(schedule) + passes * math.ceil(n / group), desc="sampling", disable=not progress, leave=False)
        text_cache = KVCache.empty(self.depth, self_attention=False)  # text keys/values, projected once

        def draw(masked: Tensor, to_predict: Tensor, revealed: int, refining: bool = False) -> None:
            z = self.conditions(torch.cat([out, out]) if guided else out, torch.cat([masked, masked]) if guided else masked,
                                ctx, ctx_mask, text_cache)
            cond = z[:b][to_predict]
            if guided:
                cond = torch.cat([cond, z[b:][to_predict]])
            out[to_predict] = predict(cond, revealed, refining).to(out.dtype)
            bar.update()
            if on_step is not None:
                on_step(out.clone(), masked & ~to_predict)

        masked = torch.ones(b, n, dtype=torch.bool, device=out.device)
        for n_next in schedule:
            still_masked = rank >= n - n_next  # tokens are revealed in their sample's order
            draw(masked, masked & ~still_masked, n - n_next)
            masked = still_masked
        for _ in range(passes):  # every token in view but the ones redrawn now
            order = draws.uniform((b, n), out.device, rng).argsort(dim=1).argsort(dim=1)
            for first in range(0, n, group):
                redrawn = (order >= first) & (order < first + group)
                draw(redrawn, redrawn, n, refining=True)
        bar.close()
        return out

    def _sample_raster(self, out, ctx, ctx_mask, kv_cache, guided, predict, progress, on_step) -> Tensor:
        b, n = out.shape[:2]
        rows = 2 * b if guided else b
        cache = KVCache.empty(self.depth) if kv_cache else None
        start = self.start_token.expand(rows, 1, -1).to(ctx.dtype)
        for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
            if kv_cache:
                prev = start if i == 0 else self.embed(out[:, i - 1 : i]).to(ctx.dtype)
                if guided and i > 0:
                    prev = torch.cat([prev, prev])
                z = self._run(prev + self.pos_embed[:, i : i + 1], ctx, ctx_mask, cache)[:, -1]
            else:
                x = torch.cat([start, self.embed(out[:, :i]).repeat(rows // b, 1, 1).to(ctx.dtype)], dim=1)
                z = self._run(x + self.pos_embed[:, : i + 1], ctx, ctx_mask)[:, -1]
            out[:, i] = predict(z, i + 1).to(out.dtype)
            if on_step is not None:
                on_step(out.clone(), (torch.arange(n, device=out.device) > i).expand(b, n))
        return out


def _rename_special_token(module: FluidGenerator, state_dict: dict, prefix: str, *args) -> None:
    """State dicts written before the learned token was named for its role called it ``special_token``."""
    old = f"{prefix}special_token"
    if old in state_dict:
        state_dict[f"{prefix}{module._learned_token_name}"] = state_dict.pop(old)
