"""Transformer pieces: the CPU dropout keeps 1 - p of the elements and keeps the expected value, and
attention written out for dropout equals SDPA wherever the dropout mask keeps everything."""

import pytest
import torch
import torch.nn.functional as F

from fluid_lightning.models import transformer
from fluid_lightning.models.transformer import attention, dropout, keep_mask


def test_keep_mask_keeps_one_minus_p_and_follows_the_global_seed():
    torch.manual_seed(0)
    a = keep_mask(torch.Size([999, 1001]), 0.1, torch.device("cpu"))  # odd size: half a word unused
    assert a.shape == (999, 1001) and a.dtype == torch.bool
    assert abs(a.float().mean().item() - 0.9) < 0.002
    halves = a.flatten()[:-1].view(-1, 2).float().mean(0)  # both 16-bit halves of a random word
    assert torch.allclose(halves, torch.full((2,), 0.9), atol=0.003)
    torch.manual_seed(0)
    assert torch.equal(keep_mask(torch.Size([999, 1001]), 0.1, torch.device("cpu")), a)
    assert not torch.equal(keep_mask(torch.Size([999, 1001]), 0.1, torch.device("cpu")), a)


def test_dropout_keeps_the_expected_value_and_passes_gradients_through_kept_elements():
    x = torch.ones(500_000, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    assert abs(y.mean().item() - 1.0) < 0.01 and torch.allclose(y.unique(), torch.tensor([0.0, 1 / 0.75]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    assert dropout(x, 0.25, training=False) is x


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_dropout_is_sdpa_when_every_element_is_kept(causal, monkeypatch):
    q, k, v = (torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    padding = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    padding[1, ..., 4:] = False
    monkeypatch.setattr(transformer, "keep_mask", lambda shape, p, device: torch.ones(shape, dtype=torch.bool))
    got = attention(q, k, v, padding, causal=causal, dropout_p=0.2)
    mask = padding & torch.ones(6, 6, dtype=torch.bool).tril() if causal else padding
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) / 0.8
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(attention(q, k, v, padding, causal=causal), expected * 0.8)
