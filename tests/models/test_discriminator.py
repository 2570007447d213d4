"""The PatchGAN discriminator and its losses: one logit per overlapping patch, GroupNorm so that there are
no running statistics (train and eval score alike, nothing to sync across ranks); the hinge loss is zero
once real and fake logits are past the margins; the adaptive weight is the ratio of the reconstruction's
and the GAN's gradient norms at the decoder's last layer, capped. In training: tests/lit/test_tokenizer_module.py."""

from __future__ import annotations

import pytest
import torch

from fluid_lightning.models.discriminator import PatchDiscriminator, adaptive_gan_weight, hinge_d_loss


def test_one_logit_per_patch_and_no_running_statistics():
    torch.manual_seed(0)
    disc = PatchDiscriminator(width=8, depth=2, groups=4)
    images = torch.randn(2, 3, 32, 32)
    logits = disc.train()(images)
    assert logits.shape == (2, 1, 6, 6)  # 32 → 16 → 8 (stride 2), → 7 → 6 (stride 1, kernel 4)
    assert list(disc.buffers()) == []
    torch.testing.assert_close(disc.eval()(images), logits)


def test_the_hinge_loss_is_zero_past_the_margins():
    ones = torch.ones(4)
    assert hinge_d_loss(2 * ones, -2 * ones) == 0
    assert hinge_d_loss(0 * ones, 0 * ones) == pytest.approx(1.0)
    assert hinge_d_loss(2 * ones, 0 * ones) == pytest.approx(0.5)  # only the fakes are on the wrong side


def test_the_adaptive_weight_balances_the_gradient_norms_and_is_capped():
    last_layer = torch.nn.Parameter(torch.randn(4, 4))
    weight = adaptive_gan_weight(3 * last_layer.sum(), last_layer.sum(), last_layer)
    assert weight.item() == pytest.approx(3.0, rel=1e-3) and not weight.requires_grad
    assert adaptive_gan_weight(last_layer.sum(), 1e-9 * last_layer.sum(), last_layer, max_weight=50.0) == 50.0
