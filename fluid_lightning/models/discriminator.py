"""PatchGAN discriminator (pix2pix / taming's NLayerDiscriminator) and the hinge losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """Conv stack that scores overlapping patches: [B, 3, H, W] → logits [B, 1, h, w].

    ``depth`` stride-2 convs (width doubling up to 8×), then a stride-1 conv and a 1-channel conv,
    as in taming. GroupNorm instead of BatchNorm: no running statistics to sync across ranks, and
    real/fake batches do not leak statistics into each other."""

    def __init__(self, in_channels: int = 3, width: int = 64, depth: int = 3, groups: int = 32):
        super().__init__()

        def norm(ch: int) -> nn.Module:
            return nn.GroupNorm(min(groups, ch), ch)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, depth + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < depth else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), norm(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)  # DCGAN init, as taming

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """taming's balance: ‖∇rec‖ / ‖∇gan‖ at the decoder's last layer, so the GAN term never drowns
    the reconstruction whatever their scales."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
