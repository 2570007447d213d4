"""Learned tokenizers behind `ImageTokenizer`: a KL-VAE (continuous) and a VQ model (discrete).

Both wrap a diffusers model (``self.model``) built one of three ways:

- ``pretrained``: a local diffusers folder (``config.json`` + weights) or a hub id;
- ``checkpoint`` (KL only): an LDM / Stable Diffusion single-file state dict (``.ckpt``,
  ``.safetensors``; a full SD checkpoint or a VAE-only one). Keys are converted with diffusers'
  ``convert_ldm_vae_checkpoint``; the diffusers config is read off the tensor shapes, so nothing is
  fetched (``from_single_file`` wants a config from the hub);
- ``config``: a dict of the diffusers model's constructor arguments, randomly initialised (training
  from scratch, tests).

Weights loaded from ``pretrained``/``checkpoint`` are reloaded from there and left out of the
state dict (so generator checkpoints do not carry a frozen VAE); set ``weights_in_checkpoint`` to
keep them (the TokenizerModule does, because it trains them).

KL latents are normalised as ``(z - shift) * scale`` before they become tokens. ``shift``/``scale``
are scalars or one value per latent channel, computed from data by
``python -m fluid_lightning tokenizer stats`` and stored as ``latent_stats.json`` next to the
weights (read from ``stats``, or from ``{pretrained}/latent_stats.json`` when it exists).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .frozen import keep_out_of_checkpoints
from .tokenizers import ImageTokenizer, patchify, unpatchify

STATS_FILE = "latent_stats.json"
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a torch ``.ckpt``/``.pt`` (``state_dict`` unwrapped)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects besides tensors: refuse rather than run arbitrary code
        raise ValueError(f"{path}: not loadable with weights_only=True ({err}); convert it to .safetensors") from err
    return state.get("state_dict", state)


def ldm_vae_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The VAE part of an LDM/SD checkpoint, prefix removed (VAE-only files pass unchanged)."""
    for prefix in LDM_VAE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv")}


def kl_config_from_ldm(state: dict[str, Tensor]) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` arguments read off the shapes of an LDM VAE state dict.

    LDM's VAE always uses GroupNorm with 32 groups and a mid-block attention unless the keys say otherwise."""
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    blocks = {int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block.")}
    if not levels or "decoder.conv_in.weight" not in state:
        raise ValueError("not an LDM VAE state dict: no encoder.down.* / decoder.conv_in keys")
    return {
        "in_channels": state["encoder.conv_in.weight"].shape[1],
        "out_channels": state["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": [state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels],
        "layers_per_block": len(blocks),
        "latent_channels": state["decoder.conv_in.weight"].shape[1],
        "norm_num_groups": 32,
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state,
    }


def load_latent_stats(path: str | os.PathLike) -> tuple[Any, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["shift"], data["scale"]


class AutoencoderTokenizer(ImageTokenizer):
    """What the KL and VQ tokenizers share: loading, weight bookkeeping, the decoder's last layer."""

    def _setup(self, model: torch.nn.Module, image_size: int, loaded: bool, source: str | None) -> None:
        self.model = model
        self.image_size = image_size
        self.source = source
        self.downsample = 2 ** (len(model.config.block_out_channels) - 1)
        if image_size % self.downsample:
            raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {self.downsample}")
        self.weights_in_checkpoint = not loaded
        if loaded:
            keep_out_of_checkpoints(self, "model")

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output conv weight: taming's adaptive GAN weight compares gradients there."""
        return self.model.decoder.conv_out.weight

    def autoencode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Training pass: (reconstruction, regulariser) — KL or codebook+commitment loss."""
        raise NotImplementedError

    def reconstruct(self, images: Tensor) -> Tensor:
        """Deterministic round trip through the tokens (what the generator sees)."""
        return self.decode(self.encode(images))


def resolve_local(path: str | None) -> str | None:
    """``path`` as given when it exists (or is a hub id); a relative path that does not exist here but
    does beside the installed package (``fluid_lightning/assets/...``) resolves there, so configs and
    checkpoints naming the shipped tokenizers work from any working directory."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    shipped = Path(__file__).resolve().parents[2] / path
    return str(shipped) if shipped.exists() else path


def _from_pretrained(cls, pretrained: str, subfolder: str | None):
    try:
        # low_cpu_mem_usage=False: the default wants `accelerate` and says so on every load
        return cls.from_pretrained(pretrained, subfolder=subfolder, low_cpu_mem_usage=False)
    except OSError as err:
        raise OSError(
            f"could not load {cls.__name__} from {pretrained!r}: give a local diffusers folder (config.json + weights); "
            "hub ids need network access and HF_HUB_OFFLINE unset"
        ) from err


class KLTokenizer(AutoencoderTokenizer):
    """Continuous tokens from a KL-VAE: latent [C, H/f, W/f] → (z - shift)·scale → ``group_size``²
    patches → ``(H/(f·g))²`` tokens of ``C·g²`` dims (SD KL-f8 at 256², g=2: 256 tokens × 16).

    ``sample_posterior`` encodes with a posterior sample instead of its mean (the default)."""

    discrete = False

    def __init__(
        self,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        config: dict[str, Any] | None = None,
        image_size: int = 256,
        group_size: int = 2,
        sample_posterior: bool = False,
        stats: str | None = None,
        shift: float | list[float] | None = None,
        scale: float | list[float] | None = None,
        subfolder: str | None = None,
    ):
        super().__init__()
        from diffusers import AutoencoderKL

        if sum(x is not None for x in (pretrained, checkpoint, config)) != 1:
            raise ValueError("KLTokenizer needs exactly one of `pretrained`, `checkpoint` or `config`")
        pretrained = resolve_local(pretrained)
        if pretrained is not None:
            model = _from_pretrained(AutoencoderKL, pretrained, subfolder)
        elif checkpoint is not None:
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = ldm_vae_state_dict(load_state_dict_file(checkpoint))
            model_config = kl_config_from_ldm(state)
            model = AutoencoderKL(**model_config, sample_size=image_size)
            model.load_state_dict(convert_ldm_vae_checkpoint(state, model_config))
        else:
            model = AutoencoderKL(**config)
        self._setup(model, image_size, loaded=config is None, source=pretrained or checkpoint)
        self.group_size, self.sample_posterior = group_size, sample_posterior
        self.latent_channels = model.config.latent_channels
        latent_grid = image_size // self.downsample
        if latent_grid % group_size:
            raise ValueError(f"latent grid {latent_grid} is not divisible by group_size {group_size}")
        self.grid_size = latent_grid // group_size
        self.token_dim = self.latent_channels * group_size**2
        self._register_stats(stats, shift, scale, pretrained)

    def _register_stats(self, stats, shift, scale, pretrained) -> None:
        if stats is None and shift is None and scale is None and pretrained and os.path.isfile(Path(pretrained) / STATS_FILE):
            stats = str(Path(pretrained) / STATS_FILE)
        if stats is not None:
            if shift is not None or scale is not None:
                raise ValueError("give either `stats` (a file) or `shift`/`scale` values, not both")
            shift, scale = load_latent_stats(stats)
        elif shift is None and scale is None and pretrained is not None:
            warnings.warn(f"no latent statistics for {pretrained}: tokens are raw latents; run "
                          "`python -m fluid_lightning tokenizer stats`", stacklevel=3)
        c = self.latent_channels
        # Buffers, so they travel with checkpoints of whatever module holds the tokenizer.
        self.register_buffer("latent_shift", torch.as_tensor(0.0 if shift is None else shift).float().expand(c).reshape(1, c, 1, 1).clone())
        self.register_buffer("latent_scale", torch.as_tensor(1.0 if scale is None else scale).float().expand(c).reshape(1, c, 1, 1).clone())

    def set_latent_stats(self, shift: Any, scale: Any) -> None:
        c = self.latent_channels
        self.latent_shift.copy_(torch.as_tensor(shift).float().expand(c).reshape(1, c, 1, 1))
        self.latent_scale.copy_(torch.as_tensor(scale).float().expand(c).reshape(1, c, 1, 1))

    def encode_latents(self, images: Tensor, sample: bool | None = None) -> Tensor:
        """Raw (un-normalised) latents [B, C, H/f, W/f]: posterior mean, or a sample."""
        self.check_images(images)
        posterior = self.model.encode(images).latent_dist
        return posterior.sample() if (self.sample_posterior if sample is None else sample) else posterior.mean

    def latents_to_tokens(self, latents: Tensor) -> Tensor:
        return patchify((latents - self.latent_shift) * self.latent_scale, self.group_size)

    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        return unpatchify(tokens, self.group_size, self.latent_channels) / self.latent_scale + self.latent_shift

    def encode(self, images: Tensor) -> Tensor:
        return self.latents_to_tokens(self.encode_latents(images))

    def decode(self, tokens: Tensor) -> Tensor:
        latents = self.tokens_to_latents(tokens.to(self.latent_scale.dtype))
        return self.model.decode(latents).sample.clamp(-1, 1)

    def autoencode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        posterior = self.model.encode(images).latent_dist
        recon = self.model.decode(posterior.sample()).sample
        # KL summed per image as in LDM, divided by the pixel count so that its weight pairs with a
        # per-pixel-mean reconstruction loss the way LDM's 1e-6 pairs with its per-image sum.
        return recon, posterior.kl().mean() / images[0].numel()


class VQTokenizer(AutoencoderTokenizer):
    """Discrete tokens from a VQ model (aMUSEd/MUSE-style VQGAN: 256² → 16×16 codes of 8192):
    ``encode → [B, N]`` indices, ``decode_code(indices)`` / ``decode(indices)`` → images,
    ``decode_latents(quantized)`` → images (taming's ``decode``)."""

    discrete = True

    def __init__(self, pretrained: str | None = None, config: dict[str, Any] | None = None,
                 image_size: int = 256, subfolder: str | None = None):
        super().__init__()
        from diffusers import VQModel

        if (pretrained is None) == (config is None):
            raise ValueError("VQTokenizer needs exactly one of `pretrained` or `config`")
        pretrained = resolve_local(pretrained)
        model = _from_pretrained(VQModel, pretrained, subfolder) if pretrained is not None else VQModel(**config)
        self._setup(model, image_size, loaded=config is None, source=pretrained)
        self.grid_size = image_size // self.downsample
        self.vocab_size = model.config.num_vq_embeddings
        self.embed_dim = model.quantize.vq_embed_dim

    def quantize(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized [B, E, g, g] with straight-through gradients, codebook+commitment loss, indices [B, N])."""
        self.check_images(images)
        quant, loss, (_, _, indices) = self.model.quantize(self.model.encode(images).latents)
        return quant, loss, indices.reshape(images.shape[0], -1)

    def encode(self, images: Tensor) -> Tensor:
        return self.quantize(images)[2]

    def decode_latents(self, quant: Tensor) -> Tensor:
        # post_quant_conv + decoder directly: VQModel.decode would quantize again, or (aMUSEd's
        # lookup_from_codebook) read its input as indices.
        model = self.model
        dec = model.decoder(model.post_quant_conv(quant), quant if model.config.norm_type == "spatial" else None)
        return dec

    def decode_code(self, indices: Tensor) -> Tensor:
        b, g = indices.shape[0], self.grid_size
        quant = self.model.quantize.get_codebook_entry(indices.reshape(-1).long(), (b, g, g, self.embed_dim))
        return self.decode_latents(quant)

    def decode(self, tokens: Tensor) -> Tensor:
        return self.decode_code(tokens).clamp(-1, 1)

    def autoencode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        quant, loss, _ = self.quantize(images)
        return self.decode_latents(quant), loss
