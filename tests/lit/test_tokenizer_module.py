"""TokenizerModule training (reconstruction, GAN from disc_start, EMA, DDP) and learned tokenizers inside
the GeneratorModule (on the fly and from cached latents; loaded weights left out of checkpoints)."""

import lightning as L
import pytest
import torch
from tiny import ROOT, TINY_T5, kl_tokenizer, shapes_images, tiny_generator, vq_tokenizer

from fluid_lightning.checkpointing import safe_load
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import ShapesDataModule
from fluid_lightning.data.shards import write_shapes_shards
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.lit.tokenizer_module import TokenizerModule
from fluid_lightning.models import PatchDiscriminator, T5TextEncoder
from fluid_lightning.tokenizer_tools import cache_latents, export_tokenizer, load_tokenizer, shapes_plan


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
    images = module.log_images({"image": shapes_images(2)})
    recon, inputs = images["reconstructions"], images["inputs"]
    assert recon.shape == inputs.shape == (2, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1
    torch.testing.assert_close(inputs, (shapes_images(2) + 1) / 2)


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
    assert module.log_images({"image": shapes_images(2).to(torch.bfloat16)})["reconstructions"].dtype == torch.float32


def test_gan_off_before_start_leaves_the_discriminator_untouched(tmp_path):
    # also runs a user-given perceptual network (any module called as f(recon, target))
    module = TokenizerModule(kl_tokenizer(), discriminator=PatchDiscriminator(width=8, depth=1, groups=4), disc_start=100,
                             perceptual=torch.nn.MSELoss(), perceptual_weight=0.5)
    before = [p.detach().clone() for p in module.discriminator.parameters()]
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(
        module, torch.utils.data.DataLoader(Repeat(shapes_images(2)), batch_size=2))
    assert all(torch.equal(a, b) for a, b in zip(before, module.discriminator.parameters()))


def test_tokenizer_module_trains_under_ddp_in_two_processes(tmp_path):
    """Two optimisers and a GAN that starts mid-run under plain DDP: the discriminator must be in the
    graph before disc_start, and both players' losses must share one backward pass."""
    import os
    import subprocess
    import sys

    root = ROOT
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
    checkpoint = safe_load(tmp_path / "checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 3
    assert len(checkpoint["optimizer_states"]) == 2 and checkpoint["optimizer_states"][1]["state"]  # disc stepped


def test_generator_trains_with_a_kl_tokenizer_and_with_cached_latents(tmp_path):
    def module():
        torch.manual_seed(0)
        return GeneratorModule(tiny_generator(grid_size=8, token_dim=16), kl_tokenizer(), T5TextEncoder(config=TINY_T5),
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


def test_generator_checkpoints_leave_out_loaded_tokenizer_weights_and_load_back(tmp_path):
    folder = export_tokenizer(kl_tokenizer(shift=0.1, scale=2.0), tmp_path / "kl")

    def module():
        torch.manual_seed(0)
        return GeneratorModule(tiny_generator(grid_size=8, token_dim=16), load_tokenizer(str(folder)),
                               T5TextEncoder(config=TINY_T5), ema_decay=None)

    state = module().state_dict()
    assert not any(k.startswith("tokenizer.model.") for k in state)
    assert torch.equal(state["tokenizer.latent_scale"], torch.full((1, 4, 1, 1), 2.0))
    fresh = module()
    fresh.load_state_dict(state)  # strict: the tokenizer's own weights come from its folder
    images = shapes_images(2)
    torch.testing.assert_close(fresh.tokenizer.encode(images), kl_tokenizer(shift=0.1, scale=2.0).eval().encode(images))


def test_tokenizer_module_trains_and_validates_on_uint8_webdataset_batches(tmp_path):
    write_shapes_shards(tmp_path, n=8, val_n=4, size=32, shard_size=4, progress=False)
    data = WebDataModule(str(tmp_path / "train"), val_urls=str(tmp_path / "val"), image_size=32, batch_size=4,
                         num_workers=0, resampled=False, shuffle_buffer=0, pin_memory=False, persistent_workers=False)
    module = TokenizerModule(kl_tokenizer(), ema_decay=0.9)
    before = [p.detach().clone() for p in module.tokenizer.parameters()]
    L.Trainer(fast_dev_run=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(module, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.tokenizer.parameters()))
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].dtype == torch.uint8
    floats = {"image": images_to_float(batch["image"])}
    for key, value in module.log_images(batch).items():
        assert torch.equal(value, module.log_images(floats)[key]), key
    logged = {}
    module.log = lambda name, value, **kwargs: logged.setdefault(name, []).append(value)
    module.validation_step(batch, 0)
    module.validation_step(floats, 0)
    assert all(torch.equal(*values) for values in logged.values()) and set(logged) == {"val/rec_loss", "val/psnr"}
