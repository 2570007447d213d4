"""The pixel tokenizers and the grid they share with every tokenizer: patchify and unpatchify are exact
inverses in raster order (for pixels and for grouped latents), and palette codes round-trip. The learned
KL-VAE and VQ: test_autoencoders.py."""

import pytest
import torch

from fluid_lightning.models import PaletteTokenizer
from fluid_lightning.models.tokenizers import patchify, unpatchify


def test_patchify_and_unpatchify_are_exact_inverses():
    x = torch.randn(2, 3, 32, 32)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 64, 48)
    assert torch.equal(unpatchify(tokens, 4, 3), x)
    # Token 1 is the patch right of token 0 (raster order over the grid).
    assert torch.equal(tokens[0, 1].view(4, 4, 3).permute(2, 0, 1), x[0, :, 0:4, 4:8])


def test_palette_tokenizer_round_trips_palette_colours():
    tok = PaletteTokenizer(image_size=16, patch_size=4, levels=8)
    codes = torch.randint(0, tok.vocab_size, (2, tok.num_tokens))
    assert torch.equal(tok.encode(tok.decode(codes)), codes)
    with pytest.raises(ValueError, match="image_size"):
        tok.encode(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("group", [1, 2, 4])
def test_grouped_patchify_is_an_exact_inverse_and_raster_ordered(group):
    z = torch.randn(2, 4, 16, 16)
    tokens = patchify(z, group)
    assert tokens.shape == (2, (16 // group) ** 2, 4 * group * group)
    assert torch.equal(unpatchify(tokens, group, 4), z)
    # token 1 is the second group of the first row, laid out (row, col, channel)
    assert torch.equal(tokens[:, 1], z[:, :, :group, group : 2 * group].permute(0, 2, 3, 1).flatten(1))
