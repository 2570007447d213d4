"""How much a generator reads its caption: the shuffle gap compares like with like (zero for a model blind
to text, or for one caption everywhere), the spread of conditions sees every caption in both orders, and
each distinct caption counts once, from its first row."""

from __future__ import annotations

import torch
from tiny import TINY_T5, tiny_generator

from fluid_lightning.evaluation.caption_use import condition_spread, first_of_each, shuffle_gap


def test_a_generator_blind_to_text_gives_zero_gap_and_zero_spread():
    torch.manual_seed(0)
    generator = tiny_generator(grid_size=2, token_dim=6).eval()
    for p in generator.text.parameters():  # the aligned text is the same for every caption
        torch.nn.init.zeros_(p)
    text, mask = torch.randn(4, 5, TINY_T5["d_model"]), torch.ones(4, 5, dtype=torch.bool)
    tokens = torch.randn(4, 4, 6)
    true, shuffled = shuffle_gap(generator, tokens, text, mask, seed=3)
    assert true == shuffled
    assert condition_spread(generator, text, mask) == 0.0


def test_the_gap_compares_like_with_like_and_the_spread_sees_every_raster_caption():
    torch.manual_seed(0)
    text, mask = torch.randn(4, 5, TINY_T5["d_model"]), torch.ones(4, 5, dtype=torch.bool)
    for order in ("random", "raster"):
        generator = tiny_generator(order=order, grid_size=2, token_dim=6).eval()
        tokens = torch.randn(4, 4, 6)
        same = text[:1].expand(4, -1, -1)  # one caption everywhere: shuffling changes nothing
        true, shuffled = shuffle_gap(generator, tokens, same, mask, seed=1)
        assert true == shuffled
        assert condition_spread(generator, text, mask) > 0
        assert condition_spread(generator, text[:1], mask[:1]) == 0.0


def test_each_distinct_caption_counts_once_from_its_first_row():
    assert first_of_each(["b", "a", "b", "c", "a"]) == [0, 1, 3]
    assert first_of_each([]) == []
