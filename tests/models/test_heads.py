"""Diffusion maths and the two token heads: learning, determinism, CFG, respacing, loss wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fluid_lightning.models.diffusion import GaussianDiffusion, make_betas, space_timesteps
from fluid_lightning.models.heads import DiffusionHead, LogitsHead

MU = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])
SD = torch.tensor([[0.3, 0.5], [0.5, 0.3]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return MU[labels] + SD[labels] * torch.randn(len(labels), 2, generator=g)


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Replace the zero init so that the network output (and the condition) actually matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


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


# ---------------------------------------------------------------- diffusion head
def _briefly_trained_cosine_head(prediction_type: str) -> tuple[DiffusionHead, torch.Tensor]:
    """A small head trained 300 steps on the two-Gaussian toy, and the condition of the first Gaussian."""
    torch.manual_seed(0)
    head = DiffusionHead(2, 2, width=64, depth=2, noise_schedule="cosine", diffusion_steps=50,
                         prediction_type=prediction_type)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    g = _gen(0)
    for _ in range(300):
        labels = torch.randint(0, 2, (64,), generator=g)
        loss = head.loss(_draw(labels, g), F.one_hot(labels, 2).float(), rng=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cond = F.one_hot(torch.zeros(2000, dtype=torch.long), 2).float()
    return head, cond


def test_a_briefly_trained_cosine_head_blows_up_from_the_singular_step_only() -> None:
    """Sampled over linspace (from t = 999) its ε error is multiplied by ~2e4 in the first step and the
    samples explode; over leading timesteps (never t = 999) the same weights match the data."""
    head, cond = _briefly_trained_cosine_head("epsilon")
    exploded = head.sample(cond, rng=_gen(1), timestep_spacing="linspace")
    assert exploded.std(0).min() > 10 * SD[0].max()
    x = head.sample(cond, rng=_gen(1), timestep_spacing="leading")
    assert (x.mean(0) - MU[0]).abs().max() < 0.2, x.mean(0)
    assert ((x.std(0) / SD[0]) - 1).abs().max() < 0.3, x.std(0)


def test_a_briefly_trained_v_prediction_cosine_head_does_not_blow_up_from_any_step() -> None:
    """The same training with v-prediction: sampled from t = 999 too, the samples match the data (to the
    brief training's accuracy: mean within 0.25, spread within 40%), as they do over leading timesteps."""
    head, cond = _briefly_trained_cosine_head("v")
    from_999, leading = (head.sample(cond, rng=_gen(1), timestep_spacing=s) for s in ("linspace", "leading"))
    assert (from_999.mean(0) - leading.mean(0)).abs().max() < 0.05
    for x in (from_999, leading):
        assert (x.mean(0) - MU[0]).abs().max() < 0.25, x.mean(0)
        assert ((x.std(0) / SD[0]) - 1).abs().max() < 0.4, x.std(0)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_diffusion_head_learns_conditional_gaussians(learn_sigma: bool) -> None:
    # The linear schedule: with cosine, the first sampling step (SNR ~1e-9 at t=999) needs ε accurate to
    # ~1e-3, which this small head does not reach in a CPU-test budget; the cosine sampler maths is
    # checked with the exact ε above.
    torch.manual_seed(0)
    head = DiffusionHead(2, 2, width=64, depth=2, noise_schedule="linear", learn_sigma=learn_sigma)
    steps = 800
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    g = _gen(0)
    for _ in range(steps):
        labels = torch.randint(0, 2, (64,), generator=g)
        loss = head.loss(_draw(labels, g), F.one_hot(labels, 2).float(), rng=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for label in (0, 1):
        cond = F.one_hot(torch.full((2000,), label), 2).float()
        x = head.sample(cond, rng=_gen(1))
        assert x.shape == (2000, 2)
        assert (x.mean(0) - MU[label]).abs().max() < 0.15, x.mean(0)
        assert ((x.std(0) / SD[label]) - 1).abs().max() < 0.2, x.std(0)


def test_diffusion_head_sampling_is_seeded() -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, diffusion_steps=10)
    _randomise(head)
    cond = torch.randn(5, 4, generator=_gen(0))
    a = head.sample(cond, rng=_gen(7))
    b = head.sample(cond, rng=_gen(7))
    c = head.sample(cond, rng=_gen(8))
    assert a.shape == (5, 3)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_diffusion_head_cfg_one_equals_conditional(learn_sigma: bool) -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, diffusion_steps=10, learn_sigma=learn_sigma)
    _randomise(head, std=0.1)
    cond = torch.randn(6, 4, generator=_gen(0))
    uncond = torch.randn(1, 4, generator=_gen(1)).expand(6, 4)
    plain = head.sample(cond, rng=_gen(3))
    guided = head.sample(torch.cat([cond, uncond]), cfg=1.0, rng=_gen(3))
    assert guided.shape == (6, 3)
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=1e-5)
    # Guidance must change the result, otherwise the check above proves nothing.
    strong = head.sample(torch.cat([cond, uncond]), cfg=4.0, rng=_gen(3))
    assert not torch.allclose(strong, plain, atol=1e-3)
    with pytest.raises(ValueError):
        head.sample(cond[:5], cfg=2.0)


def test_diffusion_head_loss_repeats_rows_and_trains_every_parameter() -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, batch_mul=4)
    _randomise(head, std=0.1)
    seen: list[int] = []
    head.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    target, cond = torch.randn(5, 3, generator=_gen(0)), torch.randn(5, 4, generator=_gen(1))
    loss = head.loss(target, cond, rng=_gen(2))
    assert seen == [20]  # 5 rows x batch_mul 4, one forward pass
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.equal(loss.detach(), head.loss(target, cond, rng=_gen(2)).detach())
    with pytest.raises(ValueError):
        head.loss(target, cond[:4])


def test_diffusion_head_loss_embeds_each_condition_once_with_the_same_loss_and_gradients() -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, batch_mul=4)
    _randomise(head, std=0.1)
    target, cond = torch.randn(5, 3, generator=_gen(0)), torch.randn(5, 4, generator=_gen(1))
    rows: list[int] = []
    handle = head.net.cond_embed.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    loss = head.loss(target, cond, rng=_gen(2))
    handle.remove()
    assert rows == [5]  # not 20: the batch_mul copies share one projection
    fast = torch.autograd.grad(loss, list(head.parameters()))
    # Each copy embedding its own row of the repeated condition, as MAR does:
    per_copy = head.train_diffusion.training_losses(
        lambda x, t: head.net(x, t, head.net.embed_condition(cond.repeat(4, 1))), target.repeat(4, 1), _gen(2)
    ).mean()
    torch.testing.assert_close(loss, per_copy)
    for got, want in zip(fast, torch.autograd.grad(per_copy, list(head.parameters()))):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="evenly"):
        head.net(torch.randn(7, 3), torch.zeros(7, dtype=torch.long), head.net.embed_condition(cond[:2]))


def test_time_embedding_looked_up_per_timestep_equals_it_per_row_with_the_same_gradients() -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, num_train_steps=50)
    _randomise(head, std=0.1)
    net, t = head.net, torch.randint(0, 50, (300,), generator=_gen(0))
    looked_up = net.embed_time(t)  # 300 rows > 50 timesteps: the MLP runs on the 50 steps
    per_row = net.time_embed(t)
    torch.testing.assert_close(looked_up, per_row)
    weights = list(net.time_embed.parameters())
    for got, want in zip(torch.autograd.grad(looked_up.square().sum(), weights),
                         torch.autograd.grad(per_row.square().sum(), weights)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # sums over 300 rows in another order
    rows: list[int] = []
    net.time_embed.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    net.embed_time(t), net.embed_time(t[:20])
    assert rows == [50, 20]


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++"])
def test_sampling_embeds_each_diffusion_step_once_as_if_per_row(sampler: str) -> None:
    head = DiffusionHead(3, 4, width=32, depth=2, diffusion_steps=10)
    _randomise(head, std=0.1)
    cond = torch.randn(12, 4, generator=_gen(0))  # [cond; uncond] of 6 tokens under cfg
    rows: list[int] = []
    handle = head.net.time_embed.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    shared = head.sample(cond, cfg=2.0, rng=_gen(1), diffusion_sampler=sampler, diffusion_steps=10)
    handle.remove()
    assert rows == [1] * 10  # one row per diffusion step, not one per token and guidance half
    net_forward = head.net.forward

    def per_row(x: torch.Tensor, t: torch.Tensor, cond_embedding: torch.Tensor) -> torch.Tensor:
        return net_forward(x, t.expand(x.shape[0]), cond_embedding)

    head.net.forward = per_row
    torch.testing.assert_close(head.sample(cond, cfg=2.0, rng=_gen(1), diffusion_sampler=sampler,
                                           diffusion_steps=10), shared)


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


# ---------------------------------------------------------------- logits head
def test_logits_head_temperature_zero_is_argmax_and_cfg() -> None:
    head = LogitsHead(4, 11)
    _randomise(head, std=0.5)
    cond = torch.randn(7, 4, generator=_gen(0))
    expected = head.logits(cond).argmax(-1)
    assert torch.equal(head.sample(cond, temperature=0.0), expected)
    uncond = torch.randn(7, 4, generator=_gen(1))
    assert torch.equal(head.sample(torch.cat([cond, uncond]), temperature=0.0, cfg=1.0), expected)
    a = head.sample(cond, rng=_gen(5))
    assert torch.equal(a, head.sample(cond, rng=_gen(5)))
    assert torch.equal(head.sample(torch.cat([cond, uncond]), cfg=1.0, rng=_gen(5)), a)


def test_logits_head_learns_conditional_categorical_and_top_k() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0], [0.1, 0.1, 0.1, 0.35, 0.35]])
    head = LogitsHead(2, 5)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=300, pct_start=0.1)
    g = _gen(0)
    for _ in range(300):
        labels = torch.randint(0, 2, (512,), generator=g)
        target = torch.multinomial(probs[labels], 1, generator=g).squeeze(-1)
        loss = head.loss(target, F.one_hot(labels, 2).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for label in (0, 1):
        cond = F.one_hot(torch.full((4000,), label), 2).float()
        tokens = head.sample(cond, rng=_gen(1))
        freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
        assert (freq - probs[label]).abs().max() < 0.04, freq
        top2 = head.sample(cond, top_k=2, rng=_gen(1))
        allowed = set(head.logits(cond[:1]).topk(2, dim=-1).indices[0].tolist())
        assert set(top2.unique().tolist()) == allowed
    # A low temperature sharpens towards the mode.
    cond0 = F.one_hot(torch.zeros(4000, dtype=torch.long), 2).float()
    cold = head.sample(cond0, temperature=0.3, rng=_gen(2))
    assert (cold == 0).float().mean() > 0.8
