"""The generator's contracts: masking, causality, KV cache, seeds and guidance, in all four variants."""

import pytest
import torch
from tiny import tiny_generator

from fluid_lightning.models import generator as generator_module
from fluid_lightning.models.generator import cosine_mask_schedule, truncated_normal

VARIANTS = [(t, o) for t in ("continuous", "discrete") for o in ("random", "raster")]


def random_tokens(gen, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    if gen.token_kind == "continuous":
        return torch.randn(batch, gen.num_tokens, gen.token_dim, generator=g)
    return torch.randint(0, gen.vocab_size, (batch, gen.num_tokens), generator=g)


def test_truncated_normal_stays_in_bounds_and_has_the_right_mean():
    x = truncated_normal(200_000, 1.0, 0.25, 0.7, 1.0, torch.Generator().manual_seed(0), "cpu")
    assert x.min() >= 0.7 and x.max() <= 1.0
    # Mean of N(1, 0.25²) truncated to [0.7, 1]: 1 - 0.25·(φ(-1.2) - φ(0)) / (Φ(0) - Φ(-1.2)) ≈ 0.8666.
    assert abs(x.mean().item() - 0.8666) < 0.002


def test_random_mask_ratio_within_bounds():
    gen = tiny_generator(grid_size=8)
    mask = gen.random_mask(4096, "cpu", torch.Generator().manual_seed(0))
    ratio = mask.float().mean(1)
    assert ratio.min() >= 0.7 and ratio.max() <= 1.0
    assert ratio.std() > 0.03  # a ratio per sample, not one for the batch


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_random_order_loss_only_on_masked_tokens_and_masked_inputs_do_not_leak(tokens, text, monkeypatch):
    gen = tiny_generator(tokens).train()
    gen.caption_dropout = 0.0
    emb, mask = text
    seen = {}

    def capture(target, cond, rng=None):
        seen["target"], seen["cond"] = target.clone(), cond.clone()
        return cond.sum() * 0

    monkeypatch.setattr(gen.head, "loss", capture)
    tokens_a = random_tokens(gen, 3)
    gen(tokens_a, emb, mask, rng=torch.Generator().manual_seed(1))
    expected_mask = gen.random_mask(3, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(seen["target"], tokens_a[expected_mask])
    target_a, cond_a = seen["target"], seen["cond"]

    # Changing the tokens the model must predict changes the targets but not what the model sees.
    tokens_b = tokens_a.clone()
    tokens_b[expected_mask] = random_tokens(gen, 3, seed=5)[expected_mask]
    gen(tokens_b, emb, mask, rng=torch.Generator().manual_seed(1))
    assert not torch.equal(seen["target"], target_a)
    torch.testing.assert_close(seen["cond"], cond_a, rtol=0, atol=0)


def test_text_token_dropout_hides_caption_tokens_in_training_only(text, monkeypatch):
    gen = tiny_generator(text_token_dropout=0.5, caption_dropout=0.0)
    emb, mask = text
    seen = []
    encode = gen.encode_text
    monkeypatch.setattr(gen, "encode_text", lambda t, m, drop=None: seen.append(m.clone()) or encode(t, m, drop))
    tokens = random_tokens(gen, emb.shape[0])
    gen.train()(tokens, emb, mask, rng=torch.Generator().manual_seed(0))
    hidden = mask & ~seen[0]
    assert not (seen[0] & ~mask).any()  # padding stays hidden
    assert seen[0][:, 0].all() and hidden.any()  # some words go, never a whole caption
    gen.eval()(tokens, emb, mask, rng=torch.Generator().manual_seed(0))
    assert torch.equal(seen[1], mask)
    with pytest.raises(ValueError, match="text_token_dropout"):
        tiny_generator(text_token_dropout=1.0)


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_raster_order_is_causal(tokens, text, monkeypatch):
    gen = tiny_generator(tokens, "raster").eval()
    emb, mask = text
    seen = {}
    monkeypatch.setattr(gen.head, "loss", lambda target, cond, rng=None: seen.setdefault("c", []).append(cond) or cond.sum())
    tokens_a = random_tokens(gen, 3)
    tokens_b = tokens_a.clone()
    tokens_b[:, 7] = random_tokens(gen, 3, seed=9)[:, 7]
    gen(tokens_a, emb, mask)
    gen(tokens_b, emb, mask)
    n = gen.num_tokens
    cond_a, cond_b = (c.view(3, n, -1) for c in seen["c"])
    torch.testing.assert_close(cond_a[:, :8], cond_b[:, :8], rtol=0, atol=0)  # token 7 is predicted at 7, read from 8 on
    assert not torch.allclose(cond_a[:, 8:], cond_b[:, 8:])


def test_cosine_schedule_reveals_every_token_once():
    for n, k in [(256, 64), (16, 16), (16, 4), (4, 1), (64, 100)]:
        counts = cosine_mask_schedule(n, min(k, n))
        assert counts[-1] == 0
        revealed = [prev - nxt for prev, nxt in zip([n] + counts[:-1], counts)]
        assert all(r >= 1 for r in revealed) and sum(revealed) == n


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_raster_kv_cache_gives_exactly_the_uncached_tokens(tokens, cfg, text):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, "raster").double().eval()
    emb, mask = text
    emb = emb.double()

    def run(use_cache):
        return gen.sample(emb, mask, cfg=cfg, kv_cache=use_cache, rng=torch.Generator().manual_seed(3))

    cached, uncached = run(True), run(False)
    if tokens == "discrete":
        assert torch.equal(cached, uncached)
    else:
        torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-10)


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_random_order_text_keys_projected_once_give_the_recomputed_tokens(tokens, text, monkeypatch):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, "random").double().eval()
    emb, mask = text
    emb = emb.double()

    projections = []
    kv = gen.blocks[0].cross.kv
    monkeypatch.setattr(kv, "forward", lambda x, forward=kv.forward: projections.append(1) or forward(x))

    def run():
        projections.clear()
        return gen.sample(emb, mask, steps=4, cfg=3.0, rng=torch.Generator().manual_seed(3))

    cached = run()
    assert len(projections) == 1  # once per sample, not once per step
    monkeypatch.setattr(generator_module.KVCache, "empty", classmethod(lambda cls, depth, self_attention=True: None))
    assert torch.equal(run(), cached) and len(projections) == 4


@pytest.mark.parametrize("tokens,order", VARIANTS)
def test_same_seed_same_tokens_and_other_seed_differs(tokens, order, text):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, order).eval()
    emb, mask = text

    def run(seed):
        return gen.sample(emb, mask, steps=4, cfg=2.0, rng=torch.Generator().manual_seed(seed))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_random_draws_do_not_depend_on_the_default_dtype(tokens, text):
    """A bf16 uniform has 256 levels: orders would tie (towards low token indices) and noise coarsen."""
    torch.manual_seed(0)
    gen = tiny_generator(tokens, grid_size=8).train()
    emb, mask = text
    target = random_tokens(gen, emb.shape[0])

    def draws():
        g = torch.Generator().manual_seed(0)
        order_mask = gen.random_mask(64, "cpu", g)
        loss = gen.train()(target, emb, mask, rng=g)
        return order_mask, loss, gen.eval().sample(emb, mask, steps=4, rng=g)

    expected = draws()
    torch.set_default_dtype(torch.bfloat16)  # what Lightning's bf16-true does around every step
    try:
        got = draws()
    finally:
        torch.set_default_dtype(torch.float32)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


@pytest.mark.parametrize("tokens,order", VARIANTS)
def test_guidance_at_scale_one_equals_unguided_sampling(tokens, order, text):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, order).double().eval()
    emb, mask = text
    emb = emb.double()

    def run(guidance):
        return gen.sample(emb, mask, steps=4, cfg=1.0, guidance=guidance, rng=torch.Generator().manual_seed(2))

    guided, plain = run(True), run(False)
    if tokens == "discrete":
        assert torch.equal(guided, plain)
    else:
        torch.testing.assert_close(guided, plain, rtol=0, atol=1e-8)


def test_guidance_changes_samples(text):
    torch.manual_seed(0)
    gen = tiny_generator("discrete", "random").eval()
    torch.nn.init.normal_(gen.text.null, std=1.0)  # make the null condition differ from the captions
    emb, mask = text
    a = gen.sample(emb, mask, steps=4, cfg=1.0, rng=torch.Generator().manual_seed(2))
    b = gen.sample(emb, mask, steps=4, cfg=8.0, rng=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_wrong_token_shape_names_the_fix(text):
    gen = tiny_generator("continuous")
    with pytest.raises(ValueError, match="token_dim"):
        gen(torch.randn(3, gen.num_tokens, gen.token_dim + 1), *text)


@pytest.mark.parametrize("order,name", [("random", "mask_token"), ("raster", "start_token")])
def test_the_learned_token_is_named_for_its_role_and_old_state_dicts_load(order, name):
    gen = tiny_generator("continuous", order)
    assert name in dict(gen.named_parameters()) and "special_token" not in gen.state_dict()
    old = {("special_token" if k == name else k): v.clone() + (1 if k == name else 0) for k, v in gen.state_dict().items()}
    fresh = tiny_generator("continuous", order)
    fresh.load_state_dict(old, strict=True)  # a state dict written before the rename
    torch.testing.assert_close(getattr(fresh, name), getattr(gen, name) + 1)


@pytest.mark.parametrize("order", ["random", "raster"])
def test_on_step_sees_every_step_and_the_last_one_is_the_sample(order, text):
    torch.manual_seed(0)
    gen = tiny_generator("discrete", order).eval()
    frames = []
    out = gen.sample(*text, steps=4, rng=torch.Generator().manual_seed(0),
                     on_step=lambda tokens, masked: frames.append((tokens, masked)))
    assert len(frames) == (4 if order == "random" else gen.num_tokens)
    revealed = [int((~masked).sum()) for _, masked in frames]
    assert revealed == sorted(revealed) and revealed[-1] == 3 * gen.num_tokens
    assert torch.equal(frames[-1][0], out)


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_refinement_redraws_every_token_once_a_pass_with_all_the_others_in_view(tokens, text, monkeypatch):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, "random").eval()
    n, group = gen.num_tokens, 3

    masks, frames = [], []
    conditions = gen.conditions

    def recording(grid_tokens, masked, *args):
        masks.append(masked[: len(masked) // 2].clone())  # the guided rows' half
        return conditions(grid_tokens, masked, *args)

    def run(passes: int, on_step=None) -> torch.Tensor:
        return gen.sample(*text, steps=4, cfg=2.0, rng=torch.Generator().manual_seed(0), refine_passes=passes,
                          refine_group=group, on_step=on_step)

    plain = run(0)
    monkeypatch.setattr(gen, "conditions", recording)
    refined = run(2, on_step=lambda tokens, masked: frames.append(tokens))
    steps_per_pass = -(-n // group)
    assert len(masks) == 4 + 2 * steps_per_pass
    assert torch.equal(frames[3], plain)  # the passes start from exactly the plain sample
    for p in range(2):
        this_pass = torch.stack(masks[4 + p * steps_per_pass: 4 + (p + 1) * steps_per_pass])
        assert (this_pass.sum(0) == 1).all()  # each token redrawn once, the others in view
        assert (this_pass.sum(2) <= group).all()
    assert not torch.equal(refined, plain) and torch.equal(frames[-1], refined)


@pytest.mark.parametrize("tokens", ["continuous", "discrete"])
def test_the_passes_draw_at_the_refine_temperature_and_the_steps_at_theirs(tokens, text, monkeypatch):
    torch.manual_seed(0)
    gen = tiny_generator(tokens, "random").eval()
    calls = []
    head_sample = gen.head.sample

    def recording(cond, **kwargs):
        calls.append((kwargs["temperature"], kwargs.get("detail_temperature")))
        return head_sample(cond, **kwargs)

    monkeypatch.setattr(gen.head, "sample", recording)
    passes = -(-gen.num_tokens // 4)
    gen.sample(*text, steps=4, temperature=0.9, detail_temperature=0.5, refine_passes=1, refine_temperature=0.2)
    assert calls == [(0.9, 0.5)] * 4 + [(0.2, None)] * passes
    calls.clear()
    gen.sample(*text, steps=4, temperature=0.9, detail_temperature=0.5, refine_passes=1)  # None: as the steps
    assert calls == [(0.9, 0.5)] * (4 + passes)
    with pytest.raises(ValueError, match="refine_temperature must be >= 0"):
        gen.sample(*text, steps=4, refine_passes=1, refine_temperature=-1.0)


def test_raster_order_ignores_refinement(text):
    torch.manual_seed(0)
    gen = tiny_generator("continuous", "raster").eval()

    def run(passes: int) -> torch.Tensor:
        return gen.sample(*text, cfg=2.0, rng=torch.Generator().manual_seed(0), refine_passes=passes)

    assert torch.equal(run(2), run(0))
    with pytest.raises(ValueError, match="refine_passes must be >= 0"):
        run(-1)


@pytest.mark.parametrize("order", ["random", "raster"])
def test_x0_loss_adds_the_readout_mse_on_the_predicted_tokens(order, text, monkeypatch):
    emb, mask = text
    gen = tiny_generator("continuous", order, x0_loss_weight=0.5).train()
    seen = {}

    def head_loss(target, cond, rng=None):
        seen["target"], seen["cond"] = target, cond
        return torch.zeros(())

    monkeypatch.setattr(gen.head, "loss", head_loss)
    loss = gen(random_tokens(gen, 3), emb, mask, rng=torch.Generator().manual_seed(1))
    expected = 0.5 * ((gen.x0_readout(seen["cond"]) - seen["target"]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert gen.x0_readout.weight.grad.abs().sum() > 0 and gen.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert tiny_generator("continuous", order).x0_readout is None  # off by default (MAR, Fluid)
    assert tiny_generator("discrete", order, x0_loss_weight=0.5).x0_readout is None  # a logits head needs none


@pytest.mark.parametrize("token_kind,order", VARIANTS)
def test_pooled_text_starts_as_the_plain_model_then_tells_the_head_the_caption(token_kind, order, text):
    emb, mask = text
    torch.manual_seed(0)
    plain = tiny_generator(token_kind, order).eval()
    torch.manual_seed(0)
    pooled = tiny_generator(token_kind, order, pooled_text=True).eval()
    pooled.load_state_dict(plain.state_dict(), strict=False)  # zero-initialised projection: the plain model
    tokens = random_tokens(plain, emb.shape[0])
    assert torch.equal(plain(tokens, emb, mask, rng=torch.Generator().manual_seed(2)),
                       pooled(tokens, emb, mask, rng=torch.Generator().manual_seed(2)))
    torch.nn.init.normal_(pooled.pooled_text.weight)
    ctx, ctx_mask = pooled.encode_text(emb, mask)
    padded = torch.cat([ctx, torch.randn_like(ctx)], 1), torch.cat([ctx_mask, torch.zeros_like(ctx_mask)], 1)
    # the mean runs over the caption's own tokens: padding does not move it
    torch.testing.assert_close(pooled.blank_conditions(ctx, ctx_mask), pooled.blank_conditions(*padded))
    assert not torch.allclose(pooled.blank_conditions(ctx, ctx_mask), plain.blank_conditions(ctx, ctx_mask))
    assert tiny_generator(token_kind, order).pooled_text is None  # off by default (Fluid)


@pytest.mark.parametrize("token_kind", ["continuous", "discrete"])
def test_neighbour_input_starts_as_the_plain_model_then_reads_only_revealed_neighbours(token_kind, text):
    emb, mask = text
    torch.manual_seed(0)
    plain = tiny_generator(token_kind).eval()
    torch.manual_seed(0)
    mixed = tiny_generator(token_kind, neighbour_input=True).eval()
    mixed.load_state_dict(plain.state_dict(), strict=False)  # zero-initialised convolution: the plain model
    tokens = random_tokens(plain, emb.shape[0])
    ctx, ctx_mask = plain.encode_text(emb, mask)
    masked = torch.ones(emb.shape[0], plain.num_tokens, dtype=torch.bool)
    masked[:, 5] = False  # row 1, column 1 of the 4x4 grid is revealed
    assert torch.equal(plain.conditions(tokens, masked, ctx, ctx_mask), mixed.conditions(tokens, masked, ctx, ctx_mask))

    torch.nn.init.normal_(mixed.neighbour_mix.weight)
    revealed = mixed.embed(tokens).masked_fill(masked[..., None], 0.0)
    reach = mixed._revealed_neighbours(revealed).abs().sum(-1)[0].view(4, 4) > 0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:3, 0:3] = True  # the revealed token and its eight neighbours, nothing farther
    assert torch.equal(reach, expected)
    # with nothing revealed it adds nothing: the blank condition is still the plain model's
    torch.testing.assert_close(mixed.conditions(tokens, torch.ones_like(masked), ctx, ctx_mask),
                               plain.blank_conditions(ctx, ctx_mask))
    assert tiny_generator(token_kind).neighbour_mix is None  # off by default (Fluid, MAR)
    with pytest.raises(ValueError, match="neighbour_input needs order='random'"):
        tiny_generator(token_kind, "raster", neighbour_input=True)
