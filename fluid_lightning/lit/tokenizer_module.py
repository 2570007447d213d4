"""TokenizerModule: trains or fine-tunes a KL-VAE or VQ tokenizer (taming / LDM recipe).

Loss of the autoencoder: L1 or L2 reconstruction + optional perceptual term + KL (VAE) or
codebook+commitment (VQ) + from ``disc_start`` on, a PatchGAN generator loss whose weight is
taming's adaptive ratio ‖∇rec‖/‖∇gan‖ at the decoder's last layer (times ``disc_weight``). The
discriminator trains with the hinge loss from ``disc_start`` on. Manual optimisation, two AdamW,
one backward pass per step, so plain DDP works (conf/trainer/ddp.yaml with
``--trainer.gradient_clip_val=null``; clip with ``grad_clip`` instead).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..data.pixels import images_to_float
from ..models.autoencoders import AutoencoderTokenizer
from ..models.discriminator import adaptive_gan_weight, hinge_d_loss
from ..models.summary import dtype_of
from .base import ModuleBase
from .ema import make_ema, update_ema


class TokenizerModule(ModuleBase):
    SUBMODULES = ("tokenizer", "perceptual", "discriminator")

    def __init__(
        self,
        tokenizer: AutoencoderTokenizer,
        discriminator: nn.Module | None = None,
        perceptual: nn.Module | None = None,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        rec_loss: Literal["l1", "l2"] = "l1",
        reg_weight: float | None = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_start: int = 0,
        adaptive_weight: bool = True,
        ema_decay: float | None = None,
        grad_clip: float | None = None,
    ):
        """``perceptual`` is any module called as ``perceptual(recon, target)`` → a loss (e.g. an
        LPIPS you provide; nothing is downloaded here). ``reg_weight`` defaults to 1e-6 for KL (LDM)
        and 1.0 for VQ (taming). ``disc_start`` counts autoencoder steps (= ``trainer.global_step``).
        ``ema_decay`` keeps an EMA copy of the tokenizer that validation, ``log_images`` and export use.
        ``grad_clip`` clips both optimisers' gradient norms (Lightning refuses ``trainer.gradient_clip_val``
        under manual optimisation)."""
        super().__init__()
        self.save_hyperparameters(ignore=self.unsaved_arguments())
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        self.automatic_optimization = False
        self.tokenizer = tokenizer
        tokenizer.weights_in_checkpoint = True  # they are being trained: keep them
        self.discriminator = discriminator
        self.perceptual = perceptual.requires_grad_(False).eval() if perceptual is not None else None
        self.reg_weight = reg_weight if reg_weight is not None else (1.0 if tokenizer.discrete else 1e-6)
        self.ema = make_ema(tokenizer) if ema_decay else None  # float32 whatever the precision (lit/base.py)

    @property
    def sampling_tokenizer(self) -> AutoencoderTokenizer:
        return self.ema if self.ema is not None else self.tokenizer

    def train(self, mode: bool = True) -> TokenizerModule:
        super().train(mode)
        for frozen in (self.perceptual, self.ema):
            if frozen is not None:
                frozen.eval()
        return self

    # ---- losses --------------------------------------------------------------------------------
    def reconstruction_loss(self, recon: Tensor, images: Tensor) -> Tensor:
        loss = (recon - images).abs().mean() if self.hparams.rec_loss == "l1" else F.mse_loss(recon, images)
        if self.perceptual is not None:
            loss = loss + self.hparams.perceptual_weight * self.perceptual(recon, images).mean()
        return loss

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.hparams.disc_start

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Both players' losses in one backward pass: the autoencoder's GAN term sees the discriminator
        with detached weights, and the discriminator sees detached reconstructions, so each optimiser
        gets exactly its own gradients (the same updates as two separate passes). One backward per
        forward is what DDP needs: a second backward would find the gradients already reduced."""
        images = images_to_float(batch["image"])  # uint8 pixels (WebDataModule) or [-1, 1] floats
        step = self.trainer.global_step
        optimizers = self.optimizers()
        opt_ae, opt_disc = optimizers if isinstance(optimizers, list) else (optimizers, None)

        recon, reg = self.tokenizer.autoencode(images)
        rec = self.reconstruction_loss(recon, images)
        loss = rec + self.reg_weight * reg
        logs = {"train/rec_loss": rec, "train/reg_loss": reg}
        total = loss
        if self.gan_active(step):
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            gan = -functional_call(self.discriminator, frozen, (recon,)).mean()
            weight = torch.tensor(self.hparams.disc_weight, device=images.device)
            if self.hparams.adaptive_weight:
                weight = weight * adaptive_gan_weight(rec, gan, self.tokenizer.last_layer)
            loss = loss + weight * gan
            d_loss = hinge_d_loss(self.discriminator(images.detach()), self.discriminator(recon.detach()))
            total = loss + d_loss
            logs.update({"train/gan_loss": gan, "train/gan_weight": weight, "train/disc_loss": d_loss})
        elif self.discriminator is not None:  # DDP wants a gradient for every parameter: zeros, not stepped
            total = loss + 0.0 * sum(p.sum() for p in self.discriminator.parameters())
        opt_ae.zero_grad(set_to_none=True)
        if opt_disc is not None:
            opt_disc.zero_grad(set_to_none=True)
        self.manual_backward(total)
        self._clip(opt_ae)
        opt_ae.step()
        if opt_disc is not None and self.gan_active(step):
            self._clip(opt_disc)
            # The raw torch optimizer: Lightning counts every LightningOptimizer.step() in global_step,
            # which would then advance twice per batch and halve max_steps / disc_start.
            opt_disc.optimizer.step()
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=False, batch_size=images.shape[0])
        self.log("rec", rec, prog_bar=True, logger=False, batch_size=images.shape[0])
        if self.ema is not None:
            self.update_ema(step)

    def _clip(self, optimizer) -> None:
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def update_ema(self, step: int) -> None:
        update_ema(self.ema, self.tokenizer, step, self.hparams.ema_decay)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = images_to_float(batch["image"])
        recon = self.sampling_tokenizer.reconstruct(images.to(dtype_of(self.sampling_tokenizer)))
        mse = ((recon - images) ** 2).flatten(1).mean(1)
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak 2 in [-1, 1]
        b = images.shape[0]
        self.log("val/rec_loss", self.reconstruction_loss(recon, images), batch_size=b, sync_dist=True)
        self.log("val/psnr", psnr.mean(), prog_bar=True, batch_size=b, sync_dist=True)

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(hp.betas)
        opt_ae = torch.optim.AdamW(self.tokenizer.parameters(), lr=hp.lr, betas=betas, weight_decay=hp.weight_decay)
        if self.discriminator is None:
            return opt_ae
        opt_disc = torch.optim.AdamW(self.discriminator.parameters(), lr=hp.disc_lr or hp.lr, betas=betas,
                                     weight_decay=hp.weight_decay)
        return [opt_ae, opt_disc]

    # ---- for callbacks -------------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], **unused: Any) -> dict[str, Tensor]:
        """{"inputs", "reconstructions"}: ``batch["image"]`` (uint8 pixels or in [-1, 1]) and its
        reconstruction by the EMA weights when kept, both [B, 3, H, W] in [0, 1]."""
        images = images_to_float(batch["image"].to(self.device))
        recon = self.sampling_tokenizer.reconstruct(images.to(dtype_of(self.sampling_tokenizer)))
        return {"inputs": ((images.clamp(-1, 1) + 1) / 2).float(), "reconstructions": ((recon.clamp(-1, 1) + 1) / 2).float()}
