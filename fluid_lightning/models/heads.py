"""Per-token output heads of the generator transformer, with one shared interface.

``loss(target, cond, rng)`` -> scalar, ``sample(cond, temperature, cfg, rng)`` -> tokens (``rng``: a
``torch.Generator`` or None for the global stream).
With ``cfg`` set, ``cond`` is the batch-doubled ``[cond; uncond]`` and the result has half its rows.

- :class:`DiffusionHead`: continuous tokens, MAR's "SimpleMLPAdaLN" denoiser (arXiv 2406.11838).
- :class:`LogitsHead`: discrete tokens, a linear classifier over the codebook.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fluid_lightning.models.diffusion import GaussianDiffusion


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the (training-scale) diffusion timestep followed by an MLP."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class AdaLNResBlock(nn.Module):
    """Residual MLP block whose LayerNorm shift/scale and residual gate come from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return torch.addcmul(x, gate, self.mlp(_modulate(self.norm(x), shift, scale)))


class AdaLNFinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """Denoiser net(x_t, t, proj(cond)): c = emb(t) + proj(cond) modulates every block through adaLN.

    The condition's projection is an argument (`embed_condition`) because its callers share one
    condition across many rows or calls: the training loss's ``batch_mul`` noisy copies of a token,
    and every step of a sampler."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, out_dim: int,
                 num_timesteps: int = 1000) -> None:
        super().__init__()
        self.num_timesteps = num_timesteps  # t is one of these training-scale integer steps
        self.input_proj = nn.Linear(token_dim, width)
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final = AdaLNFinalLayer(width, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.time_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        # Zero adaLN and output: every block starts as the identity and the head predicts ε=0, v=0
        # (MAR/DiT), which keeps the early loss well-behaved.
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for lin in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_condition(self, cond: Tensor) -> Tensor:
        """[M, cond_dim] -> [M, width]."""
        return self.cond_embed(cond.to(self.cond_embed.weight.dtype))  # the parameters' dtype (bf16-true runs)

    def embed_time(self, t: Tensor) -> Tensor:
        """[R] -> [R, width]. With more rows than timesteps (training batches), the MLP runs once per
        timestep and the rows look theirs up: fewer rows through it, and a fixed shape (no sync)."""
        if t.numel() <= self.num_timesteps:
            return self.time_embed(t)
        return self.time_embed(torch.arange(self.num_timesteps, device=t.device))[t]

    def forward(self, x: Tensor, t: Tensor, cond_embedding: Tensor) -> Tensor:
        """x [R, token_dim], t [R] or [1] (every row's), ``cond_embedding`` [M, width] with M dividing R:
        row i reads row i mod M."""
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        copies, rest = divmod(x.shape[0], cond_embedding.shape[0])
        if rest:
            raise ValueError(f"{x.shape[0]} rows of x_t cannot share {cond_embedding.shape[0]} condition rows evenly")
        c = self.embed_time(t) + (cond_embedding.repeat(copies, 1) if copies > 1 else cond_embedding)
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)


class DiffusionHead(nn.Module):
    """Per-token diffusion head for continuous tokens (MAR's DiffLoss).

    Defaults follow MAR: 3 blocks x 1024 wide, cosine schedule, 1000 training steps, 100 respaced
    sampling steps, ``batch_mul=4`` timesteps per target, learned variance. Fluid (arXiv 2410.13863)
    uses a six-block head: ``depth=6``.
    """

    def __init__(
        self,
        token_dim: int,
        cond_dim: int,
        width: int = 1024,
        depth: int = 3,
        num_train_steps: int = 1000,
        diffusion_steps: int = 100,
        noise_schedule: str = "cosine",
        batch_mul: int = 4,
        learn_sigma: bool = True,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.batch_mul = batch_mul
        self.learn_sigma = learn_sigma
        self.net = SimpleMLPAdaLN(token_dim, cond_dim, width, depth, token_dim * (2 if learn_sigma else 1),
                                  num_train_steps)
        # Plain attributes, not buffers: the schedules are constants, rebuilt from the constructor args.
        self.train_diffusion = GaussianDiffusion(num_train_steps, noise_schedule, learn_sigma,
                                                 prediction_type=prediction_type)
        self.diffusion_steps = diffusion_steps
        self._respaced: dict[tuple[int, str], GaussianDiffusion] = {}  # per (steps, spacing), built on first use

    def loss(self, target: Tensor, cond: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """target [N, token_dim], cond [N, cond_dim] -> scalar mean loss over N * batch_mul rows,
        each target repeated ``batch_mul`` times with independent timesteps and noise."""
        if target.shape[0] != cond.shape[0]:
            raise ValueError(f"target has {target.shape[0]} rows but cond has {cond.shape[0]}")
        target = target.repeat(self.batch_mul, 1)
        cond_embedding = self.net.embed_condition(cond)  # once per token, not per copy
        losses = self.train_diffusion.training_losses(lambda x, t: self.net(x, t, cond_embedding), target, rng)
        return losses.mean()

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        temperature: float = 1.0,
        cfg: float | None = None,
        rng: torch.Generator | None = None,
        diffusion_steps: int | None = None,
        diffusion_sampler: str = "ddpm",
        timestep_spacing: str = "leading",
        detail_temperature: float | None = None,
        detail_fraction: float = 0.25,
        **unused: object,
    ) -> Tensor:
        """cond [M, cond_dim] -> [M, token_dim]; with ``cfg``, cond is [cond; uncond] of 2M rows.

        Under CFG one x_t of M rows is denoised (MAR shares its initial noise between the halves; here
        the whole trajectory is shared), with ε = ε_u + cfg (ε_c - ε_u) (or the same on v, which is
        linear in ε at a given x_t) and the conditional variance.
        ``diffusion_sampler``: ``ddpm`` (ancestral, MAR's) or a fewer-step ODE solver (``ddim``,
        ``dpm++``, see `GaussianDiffusion.solve`), over ``diffusion_steps`` (default: the head's
        ``diffusion_steps``) training timesteps spaced by ``timestep_spacing``. ``detail_temperature``
        scales the noise of the last ``detail_fraction`` of the ``ddpm`` steps instead of ``temperature``
        (`GaussianDiffusion.sample`); the solvers add no noise after the start and ignore it.
        """
        cond_embedding = self.net.embed_condition(cond)  # once, not per diffusion step
        if cfg is None:

            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                return self.net(x, t, cond_embedding).float()

            m = cond.shape[0]
        else:
            if cond.shape[0] % 2:
                raise ValueError("with cfg, cond must hold [cond; uncond] (an even number of rows)")
            m = cond.shape[0] // 2

            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                out = self.net(torch.cat([x, x]), t if t.numel() == 1 else torch.cat([t, t]), cond_embedding).float()
                out_c, out_u = out.chunk(2, dim=0)
                eps_c, eps_u = out_c[:, : self.token_dim], out_u[:, : self.token_dim]
                eps = eps_u + cfg * (eps_c - eps_u)
                return torch.cat([eps, out_c[:, self.token_dim :]], dim=-1)

        steps = diffusion_steps or self.diffusion_steps
        if diffusion_sampler != "ddpm":
            return self.train_diffusion.solve(model_fn, (m, self.token_dim), diffusion_sampler, steps, timestep_spacing,
                                              cond.device, temperature, rng)
        key = (steps, timestep_spacing)
        if key not in self._respaced:
            self._respaced[key] = self.train_diffusion.respaced(steps, timestep_spacing)
        return self._respaced[key].sample(model_fn, (m, self.token_dim), cond.device, temperature=temperature, rng=rng,
                                          detail_temperature=detail_temperature, detail_fraction=detail_fraction)


class LogitsHead(nn.Module):
    """Codebook classifier for discrete tokens (MaskGIT/LlamaGen-style variants)."""

    def __init__(self, cond_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.norm = nn.LayerNorm(cond_dim)
        self.proj = nn.Linear(cond_dim, vocab_size)

    def logits(self, cond: Tensor) -> Tensor:
        return self.proj(self.norm(cond)).float()

    def loss(self, target: Tensor, cond: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """target [N] token ids, cond [N, cond_dim] -> scalar cross-entropy (rng unused)."""
        return F.cross_entropy(self.logits(cond), target.long())

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        temperature: float = 1.0,
        cfg: float | None = None,
        rng: torch.Generator | None = None,
        top_k: int | None = None,
        **unused: object,
    ) -> Tensor:
        """cond [M, cond_dim] (or [cond; uncond] of 2M rows with ``cfg``) -> token ids [M].

        Logits are guided as u + cfg (c - u), divided by ``temperature`` (0 means argmax), then
        optionally restricted to the ``top_k`` most likely tokens.
        """
        logits = self.logits(cond)
        if cfg is not None:
            c, u = logits.chunk(2, dim=0)
            logits = u + cfg * (c - u)
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if rng is not None and rng.device != probs.device:
            return (
                torch.multinomial(probs.to(rng.device), 1, generator=rng)
                .squeeze(-1)
                .to(cond.device)
            )
        return torch.multinomial(probs, 1, generator=rng).squeeze(-1)
