"""The diffusion maths (models/diffusion.py): noise schedules, timestep spacing and respacing, the
samplers and solvers recovering a known Gaussian from exact predictions, and the learned-variance loss."""

from __future__ import annotations

import pytest
import torch

from fluid_lightning.models.diffusion import GaussianDiffusion, make_betas, space_timesteps

MU = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])  # the toy data of test_heads.py: two 2-D Gaussians
SD = torch.tensor([[0.3, 0.5], [0.5, 0.3]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_respaced_alphas_cumprod_match_full_schedule(schedule: str) -> None:
    full = GaussianDiffusion(1000, schedule)
    respaced = full.respaced(100)
    keep = respaced.timestep_map
    assert len(keep) == 100 and keep[0] == 0 and keep[-1] == 999
    assert torch.all(keep[1:] > keep[:-1])
    torch.testing.assert_close(respaced.alphas_cumprod, full.alphas_cumprod[keep], rtol=1e-5, atol=1e-7)


def test_cosine_schedule_follows_nichol_dhariwal() -> None:
    betas = make_betas("cosine", 1000)
    assert betas.max() <= 0.999 and betas.min() > 0
    f = torch.cos((torch.arange(1001, dtype=torch.float64) / 1000 + 0.008) / 1.008 * torch.pi / 2) ** 2
    ac = torch.cumprod(1 - betas, 0)
    # All but the clipped last step reproduce alpha_bar(t) = f(t) / f(0).
    torch.testing.assert_close(ac[:-1], (f[1:] / f[0])[:-1])
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError):
        make_betas("quadratic", 10)


@pytest.mark.parametrize(
    ("schedule", "learn_sigma", "sigma_small"),
    [("cosine", False, False), ("cosine", False, True), ("cosine", True, False), ("linear", True, False)],
)
def test_sampler_with_exact_eps_recovers_gaussian(
    schedule: str, learn_sigma: bool, sigma_small: bool
) -> None:
    """Given the closed-form ε of Gaussian data, 100 respaced steps reproduce the data distribution."""
    mu, sd = MU[0], SD[0]
    train = GaussianDiffusion(1000, schedule, learn_sigma=learn_sigma, sigma_small=sigma_small)
    sampler = train.respaced(100)
    ac = train.alphas_cumprod

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.max() <= 999  # the model always sees training-scale timesteps
        a, b2 = ac[t].sqrt()[:, None], (1 - ac[t])[:, None]
        x0 = mu + a * sd**2 / (a**2 * sd**2 + b2) * (x - a * mu)  # E[x0 | x_t]
        eps = (x - a * x0) / b2.sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], -1) if learn_sigma else eps

    x = sampler.sample(eps_fn, (4000, 2), rng=_gen(0))
    assert (x.mean(0) - mu).abs().max() < 0.05
    assert ((x.std(0) / sd) - 1).abs().max() < 0.08


@pytest.mark.parametrize("solver,steps,spacing", [("ddim", 50, "trailing"), ("dpm++", 20, "linspace")])
def test_fewer_step_solvers_with_exact_eps_recover_gaussian(solver: str, steps: int, spacing: str) -> None:
    """diffusers' DDIM and DPM-Solver++ on this schedule reproduce the data (DPM-Solver++ in 20 steps)."""
    mu, sd = MU[0], SD[0]
    train = GaussianDiffusion(1000, "cosine", learn_sigma=True)
    ac = train.alphas_cumprod

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b2 = ac[t].sqrt()[:, None], (1 - ac[t])[:, None]
        x0 = mu + a * sd**2 / (a**2 * sd**2 + b2) * (x - a * mu)
        eps = (x - a * x0) / b2.sqrt()
        return torch.cat([eps, torch.full_like(eps, 7.0)], -1)  # the variance half is ignored

    x = train.solve(eps_fn, (4000, 2), solver, steps, spacing, rng=_gen(0))
    assert (x.mean(0) - mu).abs().max() < 0.05
    assert ((x.std(0) / sd) - 1).abs().max() < 0.08


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpm++"])
def test_exact_v_prediction_recovers_gaussian_from_the_singular_cosine_step(solver: str) -> None:
    """v-prediction: the same data from every sampler, even over linspace timesteps, which start at the cosine
    schedule's t = 999 (x0 from v needs no division by sqrt(ᾱ))."""
    mu, sd = MU[0], SD[0]
    train = GaussianDiffusion(1000, "cosine", learn_sigma=True, prediction_type="v")
    ac = train.alphas_cumprod

    def v_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = ac[t].sqrt()[:, None], (1 - ac[t]).sqrt()[:, None]
        x0 = mu + a * sd**2 / (a**2 * sd**2 + b**2) * (x - a * mu)
        v = (a * x - x0) / b  # = a ε - b x0 with ε = (x - a x0) / b
        return torch.cat([v, torch.zeros_like(v)], -1)

    if solver == "ddpm":
        x = train.respaced(100, "linspace").sample(v_fn, (4000, 2), rng=_gen(0))
    else:
        x = train.solve(v_fn, (4000, 2), solver, 20, "linspace", rng=_gen(0))
    assert (x.mean(0) - mu).abs().max() < 0.05
    assert ((x.std(0) / sd) - 1).abs().max() < 0.08
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDiffusion(1000, prediction_type="x0")


def test_timestep_spacings_follow_diffusers() -> None:
    assert space_timesteps(1000, 4, "linspace") == [0, 333, 666, 999]
    assert space_timesteps(1000, 4, "leading") == [0, 250, 500, 750]
    assert space_timesteps(1000, 4, "trailing") == [249, 499, 749, 999]
    with pytest.raises(ValueError, match="spacing"):
        space_timesteps(1000, 4, "uniform")
    # The first sampling step scales the ε error by sqrt(1/ᾱ - 1): ~2e4 from the cosine schedule's t = 999.
    full = GaussianDiffusion(1000, "cosine")
    assert full.respaced(50, "linspace")._t["sqrt_recipm1_ac"][-1] > 1e4
    assert full.respaced(50, "leading")._t["sqrt_recipm1_ac"][-1] < 100


def test_vlb_term_does_not_train_the_mean() -> None:
    """With learned sigma the ε half gets only the MSE gradient (improved DDPM's stop-gradient)."""
    diff = GaussianDiffusion(1000, "cosine", learn_sigma=True)
    out = torch.randn(8, 6, generator=_gen(0)).requires_grad_()
    x0 = torch.randn(8, 3, generator=_gen(1))
    diff.training_losses(lambda x, t: out, x0, rng=_gen(2)).sum().backward()
    # Replay the same draws (t first, then noise) to get the expected MSE gradient.
    g = _gen(2)
    torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 3, generator=g)
    torch.testing.assert_close(out.grad[:, :3], 2 * (out[:, :3].detach() - noise) / 3)
    assert out.grad[:, 3:].abs().sum() > 0  # the variance half is trained by the VLB
