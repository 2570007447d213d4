"""The EMA copy both LightningModules keep: a frozen float32 copy in eval mode that owns its weights; each
update moves it (1 - decay) of the way to the live weights, with the decay warming up as (1+t)/(10+t) to
its maximum, and copies the buffers; a bf16 model is averaged in float32. Which weights sample and
validate: tests/lit/test_generator_module.py and test_tokenizer_module.py."""

from __future__ import annotations

import torch
from torch import nn

from fluid_lightning.lit.ema import make_ema, update_ema


def test_each_update_moves_by_one_minus_a_warming_up_decay_and_copies_the_buffers():
    torch.manual_seed(0)
    live = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = make_ema(live)
    start = [p.clone() for p in ema.parameters()]
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    live.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics, which are buffers
    assert all(torch.equal(e, s) for e, s in zip(ema.parameters(), start))  # a copy, not a view

    for step, decay in ((0, 0.1), (8, 0.5), (10**6, 0.99)):  # (1+t)/(10+t), capped at max_decay
        before = [p.clone() for p in ema.parameters()]
        update_ema(ema, live, step, max_decay=0.99)
        for e, b, p in zip(ema.parameters(), before, live.parameters()):
            torch.testing.assert_close(e, decay * b + (1 - decay) * p)
    assert all(torch.equal(e, b) for e, b in zip(ema.buffers(), live.buffers()))


def test_a_bf16_model_is_averaged_into_a_float32_copy():
    torch.manual_seed(0)
    live = nn.Linear(16, 16).to(torch.bfloat16)
    ema = make_ema(live)
    assert {p.dtype for p in ema.parameters()} == {torch.float32}
    with torch.no_grad():
        for p in live.parameters():
            p.add_(0.5)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, live, step=10**6, max_decay=0.9999)  # a step of 5e-5: below bf16's rounding of the weights
    for e, b, p in zip(ema.parameters(), before, live.parameters()):
        assert e.dtype == torch.float32 and not torch.equal(e, b)
        torch.testing.assert_close(e, b + 1e-4 * (p.float() - b))
