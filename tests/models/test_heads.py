"""The two token heads: the diffusion head learns, samples seeded and guided, and wires its loss; the
logits head. The diffusion maths under the head: test_diffusion.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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


def test_a_detail_temperature_narrows_the_draw_only_through_the_last_steps() -> None:
    """Zero noise on the last quarter of the steps draws a narrower spread than temperature 1 but a wider one
    than zero noise throughout, around the same mean; at the temperature itself, or over every step, it is
    the plain sampler exactly. The ODE solvers, with no noise after the start, sample as without it."""
    head, cond = _briefly_trained_cosine_head("v")
    plain = head.sample(cond, rng=_gen(1))
    detail = head.sample(cond, rng=_gen(1), detail_temperature=0.0)
    cold = head.sample(cond, rng=_gen(1), temperature=0.0)
    assert ((cold.std(0) + 0.05) < detail.std(0)).all() and ((detail.std(0) + 0.05) < plain.std(0)).all()
    assert (detail.mean(0) - plain.mean(0)).abs().max() < 0.1
    assert torch.equal(head.sample(cond, rng=_gen(1), detail_temperature=1.0), plain)
    assert torch.equal(head.sample(cond, rng=_gen(1), detail_temperature=0.0, detail_fraction=1.0), cold)
    for solver in ("ddim", "dpm++"):
        ode = head.sample(cond[:8], rng=_gen(1), diffusion_sampler=solver, diffusion_steps=10)
        assert torch.equal(head.sample(cond[:8], rng=_gen(1), diffusion_sampler=solver, diffusion_steps=10,
                                       detail_temperature=0.0), ode)


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
