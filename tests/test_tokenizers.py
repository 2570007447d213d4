"""Learned tokenizers: KL-VAE / VQ interface, loading from a diffusers folder or an LDM single file,
latent statistics and caching commands, TokenizerModule training, and plugging into GeneratorModule."""

import json
import re

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from tiny import TINY_T5, tiny_generator

from fluid_lightning.checkpointing import safe_load
from fluid_lightning.cli import main
from fluid_lightning.data.shapes import ShapesDataModule, ShapesDataset
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.lit.tokenizer_module import TokenizerModule
from fluid_lightning.models import FrozenT5, KLTokenizer, PatchDiscriminator, VQTokenizer
from fluid_lightning.models.autoencoders import kl_config_from_ldm, ldm_vae_state_dict
from fluid_lightning.models.tokenizers import patchify, unpatchify
from fluid_lightning.tokenizer_commands import cache_latents, export_tokenizer, load_tokenizer, shapes_plan

# f2 autoencoders at 32x32: a 16x16 latent; KL groups it 2x2 into 8x8 tokens of 16 dims.
BLOCKS = {"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
          "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 32}
KL = {**BLOCKS, "latent_channels": 4}
VQ = {**BLOCKS, "latent_channels": 4, "vq_embed_dim": 4, "num_vq_embeddings": 32}


def kl_tokenizer(**kwargs) -> KLTokenizer:
    torch.manual_seed(0)
    return KLTokenizer(config=KL, image_size=32, group_size=2, **kwargs)


def vq_tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(config=VQ, image_size=32)


def shapes_images(n: int = 4, size: int = 32) -> torch.Tensor:
    data = ShapesDataset(n, image_size=size)
    return torch.stack([data[i]["image"] for i in range(n)])


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


@pytest.mark.parametrize("group", [1, 2, 4])
def test_grouped_patchify_is_an_exact_inverse_and_raster_ordered(group):
    z = torch.randn(2, 4, 16, 16)
    tokens = patchify(z, group)
    assert tokens.shape == (2, (16 // group) ** 2, 4 * group * group)
    assert torch.equal(unpatchify(tokens, group, 4), z)
    # token 1 is the second group of the first row, laid out (row, col, channel)
    assert torch.equal(tokens[:, 1], z[:, :, :group, group : 2 * group].permute(0, 2, 3, 1).flatten(1))


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


def test_stats_command_writes_stats_that_normalise_the_tokens(tmp_path):
    folder = export_tokenizer(kl_tokenizer(), tmp_path / "kl")
    main(["tokenizer", "stats", "--tokenizer", str(folder), "--shapes", "16", "--batch-size", "8", "--no-progress"])
    stats = json.loads((folder / "latent_stats.json").read_text())
    assert stats["num_images"] == 16 and len(stats["shift"]) == len(stats["scale"]) == 4
    tok = load_tokenizer(str(folder)).eval()  # picks the stats up from the folder
    torch.testing.assert_close(tok.latent_scale.flatten(), torch.tensor(stats["scale"]))
    z = unpatchify(tok.encode(shapes_images(16)), 2, 4)  # normalised latents
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)


class MetricsPerStep(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


class Repeat(torch.utils.data.Dataset):
    """The same few images every step, so a handful of steps must lower the loss."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return {"image": self.images[i % len(self.images)], "caption": "x"}


@pytest.mark.parametrize("make", [kl_tokenizer, vq_tokenizer], ids=["kl", "vq"])
def test_tokenizer_module_lowers_the_loss_and_starts_the_gan_on_time(make, tmp_path):
    torch.manual_seed(0)
    module = TokenizerModule(make(), discriminator=PatchDiscriminator(width=8, depth=1, groups=4),
                             lr=2e-3, disc_start=6, ema_decay=0.9, grad_clip=1.0)
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    record = MetricsPerStep()
    loader = torch.utils.data.DataLoader(Repeat(shapes_images(4)), batch_size=4)
    trainer = L.Trainer(max_steps=9, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[record], log_every_n_steps=1,
                        default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert trainer.global_step == 9  # the discriminator's steps do not count
    rec = [r["train/rec_loss"] for r in record.rows]
    assert rec[5] < 0.8 * rec[0]
    assert ["train/gan_loss" in r for r in record.rows] == [False] * 6 + [True] * 3
    assert all(r["train/reg_loss"] > 0 for r in record.rows)
    moved = [not torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters())]
    assert any(moved)
    recon = module.log_images(shapes_images(2))
    assert recon.shape == (2, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1


def test_tokenizer_ema_stays_float32_under_bf16_and_validates_bf16_images():
    module = TokenizerModule(kl_tokenizer(), ema_decay=0.9999).to(torch.bfloat16)  # what bf16-true does
    assert {p.dtype for p in module.tokenizer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.ema.parameters()} == {torch.float32}
    with torch.no_grad():
        for p in module.tokenizer.parameters():
            p.add_(0.5)
    before = [p.clone() for p in module.ema.parameters()]
    module.update_ema(step=10**6)
    assert all(not torch.equal(a, b) for a, b in zip(before, module.ema.parameters()))
    module.log = lambda *args, **kwargs: None  # no trainer here
    module.validation_step({"image": shapes_images(2).to(torch.bfloat16)}, 0)
    assert module.log_images(shapes_images(2).to(torch.bfloat16)).dtype == torch.float32


def test_gan_off_before_start_leaves_the_discriminator_untouched(tmp_path):
    # also runs a user-given perceptual network (any module called as f(recon, target))
    module = TokenizerModule(kl_tokenizer(), discriminator=PatchDiscriminator(width=8, depth=1, groups=4), disc_start=100,
                             perceptual=torch.nn.MSELoss(), perceptual_weight=0.5)
    before = [p.detach().clone() for p in module.discriminator.parameters()]
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(
        module, torch.utils.data.DataLoader(Repeat(shapes_images(2)), batch_size=2))
    assert all(torch.equal(a, b) for a, b in zip(before, module.discriminator.parameters()))


@pytest.mark.parametrize("make,dtype", [(kl_tokenizer, "float32"), (kl_tokenizer, "float16"), (vq_tokenizer, "float16")],
                         ids=["kl32", "kl16", "vq"])
def test_cached_latents_read_back_equal_encoding_on_the_fly(make, dtype, tmp_path):
    tok = make().eval()
    info = cache_latents(tok, shapes_plan(10, 32, shard_size=4), tmp_path / "lat", batch_size=3, dtype=dtype,
                         progress=False)
    assert info["written"] == 10 and len(info["shards"]) == 3
    again = cache_latents(tok, shapes_plan(10, 32, shard_size=4), tmp_path / "lat", progress=False)
    assert again["written"] == 0 and again["skipped_shards"] == 3  # resumed: nothing redone

    data = WebDataModule(str(tmp_path / "lat"), kind="latents", resampled=False, batch_size=4, num_workers=0,
                         shuffle_buffer=0, rank=0, world_size=1)
    data.setup("fit")
    cached = {k: z for batch in data.train_dataloader() for k, z in zip(batch["key"], batch["latent"])}
    images = ShapesDataset(10, image_size=32)
    expected = tok.encode(torch.stack([images[i]["image"] for i in range(10)]))
    assert sorted(cached) == [images[i]["key"] for i in range(10)]
    for i in range(10):
        got = cached[images[i]["key"]]
        assert got.dtype == expected.dtype
        # float32: equal up to batch-size-dependent conv arithmetic; float16: up to its rounding
        tol = 0 if tok.discrete else 2e-3 * expected.abs().max().item() if dtype == "float16" else 1e-5
        torch.testing.assert_close(got, expected[i], rtol=0, atol=tol)


def test_generator_trains_with_a_kl_tokenizer_and_with_cached_latents(tmp_path):
    def module():
        torch.manual_seed(0)
        return GeneratorModule(tiny_generator(grid_size=8, token_dim=16), kl_tokenizer(), FrozenT5(config=TINY_T5),
                               ema_decay=None)

    trainer_args = dict(fast_dev_run=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    L.Trainer(**trainer_args).fit(module(), ShapesDataModule(image_size=32, num_train=8, num_val=4, batch_size=2))

    cache_latents(kl_tokenizer().eval(), shapes_plan(8, 32, shard_size=4), tmp_path / "lat", progress=False)
    latents = WebDataModule(str(tmp_path / "lat"), kind="latents", resampled=False, batch_size=2, num_workers=0,
                            shuffle_buffer=0)
    gen = module()
    before = gen.generator.embed.weight.detach().clone()
    L.Trainer(**trainer_args).fit(gen, latents)
    assert not torch.equal(before, gen.generator.embed.weight)


def test_fit_export_stats_and_cache_shards_through_the_cli(tmp_path, monkeypatch):
    from PIL import Image

    from fluid_lightning.data.shards import write_shapes_shards

    conf = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf/tokenizer/kl_shapes.yaml")
    monkeypatch.chdir(tmp_path)  # the config's checkpoint folder is relative: runs/tokenizer_kl/checkpoints
    main(["fit", "--config", conf, "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--data.init_args.image_size=32",
          "--data.init_args.batch_size=2", "--trainer.enable_progress_bar=false", "--model.init_args.disc_start=1",
          "--trainer.default_root_dir", str(tmp_path / "fit")])
    ckpt = tmp_path / "runs/tokenizer_kl/checkpoints/last.ckpt"
    grid = next((tmp_path / "fit").rglob("reconstructions_step0000002.png"))  # ReconstructionGrid at fit end
    assert Image.open(grid).size == (2 * 32, 2 * 32)  # the first val batch (2 images) over 2 reconstructions
    folder = tmp_path / "kl"
    main(["tokenizer", "export", "--ckpt", str(ckpt), "--out", str(folder)])
    main(["tokenizer", "stats", "--tokenizer", str(folder), "--shapes", "8", "--no-progress"])
    tok = load_tokenizer(str(folder)).eval()
    assert (tok.image_size, tok.grid_size, tok.token_dim) == (32, 4, 16)
    assert not torch.equal(tok.latent_scale, torch.ones_like(tok.latent_scale))
    main(["tokenizer", "evaluate", "--tokenizer", str(folder), "--shapes", "4", "--stream", "val", "--no-progress"])
    from_ckpt = load_tokenizer(str(ckpt))  # a TokenizerModule checkpoint works directly too (its EMA copy)
    assert torch.equal(from_ckpt.model.decoder.conv_out.weight, tok.model.decoder.conv_out.weight)
    with pytest.raises(SystemExit, match="is a TokenizerModule checkpoint; this needs a GeneratorModule one"):
        main(["sample", "--ckpt", str(ckpt), "--prompt", "x", "--out", str(tmp_path / "x")])

    write_shapes_shards(tmp_path / "shapes", n=6, size=32, shard_size=3, progress=False)
    main(["tokenizer", "cache", "--tokenizer", str(folder), "--shards", str(tmp_path / "shapes/train"),
          "--out", str(tmp_path / "lat"), "--dtype", "float32", "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "lat").glob("*.tar")) == ["00000.tar", "00001.tar"]
    data = WebDataModule(str(tmp_path / "lat"), kind="latents", resampled=False, batch_size=6, num_workers=0,
                         shuffle_buffer=0, rank=0, world_size=1)
    batch = next(iter(data.train_dataloader()))
    images = ShapesDataset(6, image_size=32)  # the same scenes the shards hold (lossless PNG)
    expected = tok.encode(torch.stack([images[int(k)]["image"] for k in batch["key"]]))
    torch.testing.assert_close(batch["latent"], expected, rtol=0, atol=1e-5)


def test_tokenizer_module_trains_under_ddp_in_two_processes(tmp_path):
    """Two optimisers and a GAN that starts mid-run under plain DDP: the discriminator must be in the
    graph before disc_start, and both players' losses must share one backward pass."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fluid_lightning", "fit", "--config", str(root / "conf/trainer/ddp.yaml"),
         "--config", str(root / "conf/tokenizer/vq_shapes.yaml"), "--trainer.devices=2", "--trainer.accelerator=cpu",
         "--trainer.max_steps=3", "--trainer.gradient_clip_val=null", "--trainer.precision=32-true",
         "--model.init_args.disc_start=1", "--data.init_args.image_size=32", "--data.init_args.batch_size=2",
         "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checkpoint = safe_load(tmp_path / "runs/tokenizer_vq/checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 3
    assert len(checkpoint["optimizer_states"]) == 2 and checkpoint["optimizer_states"][1]["state"]  # disc stepped


def test_generator_checkpoints_leave_out_loaded_tokenizer_weights_and_load_back(tmp_path):
    folder = export_tokenizer(kl_tokenizer(shift=0.1, scale=2.0), tmp_path / "kl")

    def module():
        torch.manual_seed(0)
        return GeneratorModule(tiny_generator(grid_size=8, token_dim=16), load_tokenizer(str(folder)),
                               FrozenT5(config=TINY_T5), ema_decay=None)

    state = module().state_dict()
    assert not any(k.startswith("tokenizer.model.") for k in state)
    assert torch.equal(state["tokenizer.latent_scale"], torch.full((1, 4, 1, 1), 2.0))
    fresh = module()
    fresh.load_state_dict(state)  # strict: the tokenizer's own weights come from its folder
    images = shapes_images(2)
    torch.testing.assert_close(fresh.tokenizer.encode(images), kl_tokenizer(shift=0.1, scale=2.0).eval().encode(images))


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
