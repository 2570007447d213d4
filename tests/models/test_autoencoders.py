"""The learned tokenizers: KL-VAE tokens (posterior mean unless asked to sample) and VQ codes round-trip
through their decoders; latent statistics normalise tokens and invert exactly; a diffusers folder and an
LDM / Stable Diffusion single file give identical encodings, with loaded weights kept out of state dicts;
the shipped shapes tokenizers load from any directory and reconstruct."""

import re

import pytest
import torch
from safetensors.torch import save_file
from tiny import KL, kl_tokenizer, shapes_images, vq_tokenizer

from fluid_lightning.models import KLTokenizer, VQTokenizer
from fluid_lightning.models.autoencoders import kl_config_from_ldm, ldm_vae_state_dict
from fluid_lightning.tokenizer_tools import load_tokenizer


def test_kl_round_trip_shapes_dtypes_and_attributes():
    tok = kl_tokenizer().eval()
    images = shapes_images(3)
    tokens = tok.encode(images)
    assert (tok.grid_size, tok.num_tokens, tok.token_dim, tok.discrete) == (8, 64, 16, False)
    assert tokens.shape == (3, 64, 16) and tokens.dtype == torch.float32
    out = tok.decode(tokens)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
    # posterior mean by default (deterministic); the switch samples instead
    torch.testing.assert_close(tok.encode(images), tokens, rtol=0, atol=0)
    tok.sample_posterior = True
    assert not torch.equal(tok.encode(images), tokens)


def test_vq_round_trip_and_decode_code_equals_decode_of_quantized():
    tok = vq_tokenizer().eval()
    images = shapes_images(3)
    codes = tok.encode(images)
    assert (tok.grid_size, tok.vocab_size, tok.discrete) == (16, 32, True)
    assert codes.shape == (3, 256) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 32
    assert tok.decode(codes).shape == images.shape
    with torch.no_grad():
        quant, loss, indices = tok.quantize(images)
        torch.testing.assert_close(tok.decode_code(indices), tok.decode_latents(quant), rtol=0, atol=1e-5)
    assert loss.ndim == 0 and loss > 0


def test_latent_stats_normalise_tokens_and_invert_exactly():
    tok = kl_tokenizer(shift=[0.5, -1.0, 0.0, 2.0], scale=[2.0, 0.5, 1.0, 4.0]).eval()
    z = torch.randn(2, 4, 16, 16)
    tokens = tok.latents_to_tokens(z)
    torch.testing.assert_close(tok.tokens_to_latents(tokens), z)
    torch.testing.assert_close(tokens[0, 0, :4], (z[0, :, 0, 0] - tok.latent_shift.flatten()) * tok.latent_scale.flatten())


def diffusers_to_ldm(state: dict, levels: int) -> dict:
    """The inverse of diffusers' convert_ldm_vae_checkpoint, to fake an SD-style single file."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct, out = DIFFUSERS_TO_LDM_MAPPING["vae"], {}
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = value
            continue
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        k = k.replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions.0." in k:
            k = k.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm", "norm")
            for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                k = k.replace(a, b)
            value = value[:, :, None, None] if value.ndim == 2 else value  # LDM uses 1x1 convs
        out[k] = value
    return out


def test_diffusers_folder_and_sd_single_file_give_identical_encodings(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    config = {**KL, "block_out_channels": [32, 64], "layers_per_block": 2}  # a shortcut conv, 2 resnets
    AutoencoderKL(**config).save_pretrained(tmp_path / "folder")
    state = AutoencoderKL.from_pretrained(tmp_path / "folder").state_dict()
    ldm = diffusers_to_ldm(state, levels=2)
    assert {k: v for k, v in kl_config_from_ldm(ldm).items() if k in config} == config
    # a full SD checkpoint (VAE under first_stage_model., other parts ignored) and a VAE-only .ckpt
    full = {f"first_stage_model.{k}": v.clone() for k, v in ldm.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)
    save_file(full, tmp_path / "sd.safetensors")
    torch.save({"state_dict": ldm, "global_step": 3}, tmp_path / "vae.ckpt")
    assert set(ldm_vae_state_dict(full)) == set(ldm)

    images = shapes_images(2)
    folder = KLTokenizer(pretrained=str(tmp_path / "folder"), image_size=32, shift=0.0, scale=1.0).eval()
    expected = folder.encode(images)
    for single in ("sd.safetensors", "vae.ckpt"):
        tok = KLTokenizer(checkpoint=str(tmp_path / single), image_size=32).eval()
        torch.testing.assert_close(tok.encode(images), expected, rtol=0, atol=0)
        torch.testing.assert_close(tok.decode(expected), folder.decode(expected), rtol=0, atol=0)
    # loaded weights stay out of state dicts (reloaded from the source); stats travel
    assert set(folder.state_dict()) == {"latent_shift", "latent_scale"}


@pytest.mark.parametrize("name", ["shapes_kl_f4", "shapes_vq_f4"])
def test_shipped_shapes_tokenizers_load_from_any_directory_and_reconstruct(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs name them relative to the repository: fluid_lightning/assets/...
    kind = KLTokenizer if name.startswith("shapes_kl") else VQTokenizer
    tok = kind(pretrained=f"fluid_lightning/assets/{name}", image_size=64).eval()
    assert type(load_tokenizer(f"fluid_lightning/assets/{name}")) is kind  # what the tokenizer commands call
    images = shapes_images(4, size=64)
    recon = tok.decode(tok.encode(images))
    psnr = 10 * torch.log10(4 / ((recon - images) ** 2).mean())
    assert tok.num_tokens == (64 if kind is KLTokenizer else 256) and psnr > 25
    if kind is KLTokenizer:  # its latent_stats.json was found beside the weights
        assert not torch.equal(tok.latent_scale, torch.ones_like(tok.latent_scale))
