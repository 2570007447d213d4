"""Gaussian diffusion maths for the per-token diffusion head (pure torch, no Lightning).

Follows improved DDPM (Nichol & Dhariwal, 2021) as used by MAR's ``diffloss`` (arXiv 2406.11838):
ε-prediction, MSE loss, optional learned variance trained with the VLB term, and sampling on a
respaced subset of the training timesteps. The network may instead predict v = √ᾱ ε - √(1-ᾱ) x0
(Salimans & Ho, 2022): its MSE is the ε-MSE weighted by 1/ᾱ_t, so the noisiest timesteps, where the
token can only come from the condition, carry weight; the ε loss scales an error in x0 there by the
signal-to-noise ratio, nearly zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from . import draws

# model_fn(x_t, t) -> ε (or v), or [ε, var] concatenated on the last dim when the variance is learned.
# t is always given in *training* timestep units (0..num_train_steps-1), also when respaced: [R], one per
# row of x_t, in training; [1], shared by every row, from the samplers (the net embeds it once, not R times).
ModelFn = Callable[[Tensor, Tensor], Tensor]


def make_betas(schedule: str, num_steps: int) -> Tensor:
    """β_t in float64. "cosine": Nichol & Dhariwal (MAR's choice); "linear": DDPM, rescaled to num_steps."""
    if schedule == "cosine":
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        # The 0.999 clip avoids a singular last step where alpha_bar reaches 0.
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    if schedule == "linear":
        scale = 1000 / num_steps  # keeps the end points of the 1000-step DDPM schedule meaningful
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {schedule!r}; expected 'cosine' or 'linear'")


TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def space_timesteps(num_train_steps: int, diffusion_steps: int, spacing: str = "linspace") -> list[int]:
    """The training timesteps sampling visits, as diffusers spaces them: ``linspace`` spreads them over
    0..T-1, both ends included (MAR's respacing); ``leading`` takes every (T // N)-th from 0, so the
    noisiest is T - T // N; ``trailing`` counts down from T - 1 in steps of T / N. The cosine
    schedule's last step is singular (β capped at 0.999 leaves ᾱ = 2.4e-9 at T - 1, and the first
    sampling step multiplies the ε error by ~2·10⁴): ``leading`` never visits it."""
    if not 1 <= diffusion_steps <= num_train_steps:
        raise ValueError(f"diffusion_steps must be in [1, {num_train_steps}], got {diffusion_steps}")
    if spacing == "linspace":
        if diffusion_steps == 1:
            return [num_train_steps - 1]
        stride = (num_train_steps - 1) / (diffusion_steps - 1)
        return [round(i * stride) for i in range(diffusion_steps)]
    if spacing == "leading":
        return [i * (num_train_steps // diffusion_steps) for i in range(diffusion_steps)]
    if spacing == "trailing":
        stride = num_train_steps / diffusion_steps
        return sorted(round(num_train_steps - i * stride) - 1 for i in range(diffusion_steps))
    raise ValueError(f"timestep spacing must be one of {', '.join(map(repr, TIMESTEP_SPACINGS))}, got {spacing!r}")


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


class GaussianDiffusion:
    """One noise schedule, optionally respaced to a subset of its timesteps.

    Tables are computed in float64 and kept as float32 CPU tensors, copied once to each device that asks
    for them (``_table``), so this object needs no ``.to()`` and never enters a module's state dict.
    """

    def __init__(
        self,
        num_train_steps: int = 1000,
        noise_schedule: str = "cosine",
        learn_sigma: bool = True,
        use_timesteps: Sequence[int] | None = None,
        sigma_small: bool = False,
        prediction_type: str = "epsilon",
    ) -> None:
        if prediction_type not in ("epsilon", "v"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v', got {prediction_type!r}")
        self.prediction_type = prediction_type
        self.num_train_steps = num_train_steps
        self.noise_schedule = noise_schedule
        self.learn_sigma = learn_sigma
        # Only used without learn_sigma: posterior variance β̃ ("small") or β ("large", improved DDPM's default).
        self.sigma_small = sigma_small
        betas = make_betas(noise_schedule, num_train_steps)
        if use_timesteps is not None:
            # Respacing: a Markov chain over the kept steps with the same ᾱ there, so β'_i = 1 - ᾱ_{k_i}/ᾱ_{k_{i-1}}.
            keep = torch.tensor(sorted(set(use_timesteps)), dtype=torch.long)
            alphas_cumprod = torch.cumprod(1 - betas, 0)[keep]
            prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
            betas = 1 - alphas_cumprod / prev
            self.timestep_map = keep
        else:
            self.timestep_map = torch.arange(num_train_steps)
        self.num_steps = len(betas)

        ac = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        # β̃_0 = 0: borrow β̃_1 so the log stays finite (improved DDPM's "clipped" log-variance).
        first = post_var[1:2] if self.num_steps > 1 else betas[:1]
        post_log_var = torch.log(torch.cat([first, post_var[1:]]))
        tables = {
            "betas": betas,
            "alphas_cumprod": ac,
            "sqrt_ac": ac.sqrt(),
            "sqrt_one_minus_ac": (1 - ac).sqrt(),
            "sqrt_recip_ac": (1 / ac).sqrt(),
            "sqrt_recipm1_ac": (1 / ac - 1).sqrt(),
            "post_var": post_var,
            "post_log_var": post_log_var,
            "post_coef_x0": betas * ac_prev.sqrt() / (1 - ac),
            "post_coef_xt": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
            # Fixed "large" variance: β_t, except β̃_1 at t=0 as in improved DDPM.
            "log_betas": torch.log(torch.cat([first, betas[1:]])),
            "log_betas_raw": torch.log(betas),
        }
        self._t = {k: v.float() for k, v in tables.items()}
        self._t["timestep_map"] = self.timestep_map
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}

    @property
    def alphas_cumprod(self) -> Tensor:
        return self._t["alphas_cumprod"]

    @property
    def betas(self) -> Tensor:
        return self._t["betas"]

    def respaced(self, diffusion_steps: int, spacing: str = "linspace") -> GaussianDiffusion:
        """The same schedule on ``diffusion_steps`` spaced training timesteps (MAR: 100 of 1000)."""
        return GaussianDiffusion(
            self.num_train_steps,
            self.noise_schedule,
            self.learn_sigma,
            use_timesteps=space_timesteps(self.num_train_steps, diffusion_steps, spacing),
            sigma_small=self.sigma_small,
            prediction_type=self.prediction_type,
        )

    def _table(self, name: str, device: torch.device) -> Tensor:
        # Copied once per device: a host-to-GPU copy per lookup would synchronise the stream ~10 times a step.
        if device.type == "cpu":
            return self._t[name]
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = self._t[name].to(device)
        return self._on_device[key]

    def _at(self, name: str, t: Tensor, x: Tensor) -> Tensor:
        """Table entry per row of x, shaped to broadcast over x's trailing dims."""
        v = self._table(name, t.device)[t].to(x.dtype)
        return v.view(-1, *([1] * (x.dim() - 1)))

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, with t indexing this (possibly respaced) schedule."""
        return self._at("sqrt_ac", t, x0) * x0 + self._at("sqrt_one_minus_ac", t, x0) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self._at("post_coef_x0", t, xt) * x0 + self._at("post_coef_xt", t, xt) * xt
        return mean, self._at("post_var", t, xt).expand_as(xt), self._at("post_log_var", t, xt).expand_as(xt)

    # ---------------------------------------------------------------- reverse process
    def p_mean_variance(self, model_out: Tensor, xt: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from the network output."""
        model_out = model_out.float()
        if self.learn_sigma:
            out, var = model_out.chunk(2, dim=-1)
            # var in [-1, 1] interpolates log-variance between β̃_t (-1) and β_t (1) (improved DDPM).
            frac = (var + 1) / 2
            log_var = frac * self._at("log_betas_raw", t, xt) + (1 - frac) * self._at("post_log_var", t, xt)
        else:
            out = model_out
            log_var = self._at("post_log_var" if self.sigma_small else "log_betas", t, xt).expand_as(xt)
        if self.prediction_type == "v":  # x0 from v stays finite where ᾱ -> 0; from ε it divides by √ᾱ
            a, s = self._at("sqrt_ac", t, xt), self._at("sqrt_one_minus_ac", t, xt)
            pred_x0, eps = a * xt - s * out, s * xt + a * out
        else:
            eps = out
            pred_x0 = self._at("sqrt_recip_ac", t, xt) * xt - self._at("sqrt_recipm1_ac", t, xt) * eps
        mean, _, _ = self.q_posterior(pred_x0, xt, t)
        return {"mean": mean, "log_var": log_var, "pred_x0": pred_x0, "eps": eps}

    # ---------------------------------------------------------------- training
    def training_losses(
        self, model_fn: ModelFn, x0: Tensor, rng: torch.Generator | None = None
    ) -> Tensor:
        """Per-row loss [N]: MSE on ε or v (mean over dims), plus the VLB term when the variance is learned."""
        x0 = x0.float()
        n = x0.shape[0]
        t = draws.integers(self.num_steps, (n,), x0.device, rng)
        noise = draws.normal(x0.shape, x0.device, rng)
        xt = self.q_sample(x0, t, noise)
        model_out = model_fn(xt, self._table("timestep_map", x0.device)[t]).float()
        out = model_out.chunk(2, dim=-1)[0] if self.learn_sigma else model_out
        target = noise
        if self.prediction_type == "v":
            target = self._at("sqrt_ac", t, x0) * noise - self._at("sqrt_one_minus_ac", t, x0) * x0
        loss = ((out - target) ** 2).flatten(1).mean(1)
        if self.learn_sigma:
            # Stop-gradient on the mean: the VLB only trains the variance, the MSE alone trains the mean.
            frozen = torch.cat([out.detach(), model_out.chunk(2, dim=-1)[1]], dim=-1)
            loss = loss + self._vlb(frozen, x0, xt, t) * (self.num_steps / 1000.0)
        return loss

    def _vlb(self, model_out: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """VLB term in bits per dim: KL(q(x_{t-1}|x_t,x0) || p) for t>0, decoder NLL at t=0."""
        true_mean, _, true_log_var = self.q_posterior(x0, xt, t)
        out = self.p_mean_variance(model_out, xt, t)
        kl = _normal_kl(true_mean, true_log_var, out["mean"], out["log_var"]).flatten(1).mean(1)
        kl = kl / math.log(2.0)
        # Tokens are continuous latents, not 8-bit pixels, so the decoder term is a plain Gaussian NLL
        # (MAR reuses the image code's discretised likelihood here).
        nll = 0.5 * (
            math.log(2 * math.pi) + out["log_var"] + (x0 - out["mean"]) ** 2 * torch.exp(-out["log_var"])
        )
        nll = nll.flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        temperature: float = 1.0,
        rng: torch.Generator | None = None,
        detail_temperature: float | None = None,
        detail_fraction: float = 0.25,
    ) -> Tensor:
        """Ancestral sampling over this schedule's steps; ``temperature`` scales every added noise
        (MAR's convention), not the initial x_T. ``detail_temperature``, if given, replaces it on the
        last ``detail_fraction`` of the steps (the lowest noise levels, where fine detail is drawn;
        the coarse content is decided before)."""
        x = draws.normal(shape, device, rng)
        timestep_map = self._table("timestep_map", torch.device(device))
        detail_steps = round(self.num_steps * detail_fraction) if detail_temperature is not None else 0
        for i in reversed(range(self.num_steps)):
            t = torch.full((1,), i, device=device, dtype=torch.long)
            out = self.p_mean_variance(model_fn(x, timestep_map[t]), x, t)
            noise = draws.normal(shape, device, rng)
            if i > 0:
                scale = detail_temperature if i < detail_steps else temperature
                x = out["mean"] + torch.exp(0.5 * out["log_var"]) * noise * scale
            else:
                # The noise is still drawn at the last step so the random stream matches MAR's loop.
                x = out["mean"]
        return x

    @torch.no_grad()
    def solve(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        solver: str,
        num_steps: int,
        spacing: str = "leading",
        device: torch.device | str = "cpu",
        temperature: float = 1.0,
        rng: torch.Generator | None = None,
    ) -> Tensor:
        """Sampling with one of diffusers' fewer-step schedulers on this (unrespaced) schedule: ``ddim``
        (DDIM, η = 0) or ``dpm++`` (DPM-Solver++, second order; on the cosine schedule with diffusers'
        ``lambda_min_clipped=-5.1``, which keeps its singular end from amplifying ε errors). Both follow
        the probability-flow ODE, so a learned variance is not needed and ``temperature`` scales the
        starting noise."""
        if solver not in SOLVERS:
            raise ValueError(f"unknown diffusion sampler {solver!r}; expected one of {', '.join(map(repr, DIFFUSION_SAMPLERS))}")
        options = {"clip_sample": False} if solver == "ddim" else {}  # latents are not bounded to [-1, 1]
        if solver == "dpm++" and self.noise_schedule == "cosine":
            options["lambda_min_clipped"] = -5.1  # diffusers' setting for the cosine schedule's singular end
        scheduler = SOLVERS[solver](num_train_timesteps=self.num_train_steps, trained_betas=make_betas(
            self.noise_schedule, self.num_train_steps).numpy(), timestep_spacing=spacing,
            prediction_type="v_prediction" if self.prediction_type == "v" else "epsilon",
            **options)
        scheduler.set_timesteps(num_steps)
        x = draws.normal(shape, device, rng) * temperature
        for t in scheduler.timesteps:
            out = model_fn(x, torch.full((1,), int(t), device=device, dtype=torch.long)).float()
            out = out.chunk(2, dim=-1)[0] if self.learn_sigma else out
            x = scheduler.step(out, t, x).prev_sample
        return x


SOLVERS = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}
DIFFUSION_SAMPLERS = ("ddpm", *SOLVERS)  # ddpm: `GaussianDiffusion.sample`; the solvers: `GaussianDiffusion.solve`
