"""GeneratorModule: optimiser groups, lr schedule, EMA (float32 under bf16), sampling settings."""

import dataclasses

import pytest
import torch
from tiny import TINY_T5, tiny_module

from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.lit.generator_module import lr_lambda
from fluid_lightning.models import T5TextEncoder
from fluid_lightning.sampling import SamplingSettings


def test_no_weight_decay_on_biases_norms_embeddings_and_learned_tokens():
    module = tiny_module()
    decay, no_decay = (g["params"] for g in module.configure_optimizers()["optimizer"].param_groups)
    names = {id(p): n for n, p in module.generator.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay}
    assert all(p.ndim == 2 for p in decay)
    for expected in ("mask_token", "pos_embed", "text.null", "norm.weight", "blocks.0.attn.qkv.bias"):
        assert any(n.endswith(expected) or n == expected for n in no_decay_names), expected
    assert len(decay) + len(no_decay) == sum(1 for p in module.generator.parameters() if p.requires_grad)
    assert not any(p is q for p in decay + no_decay for q in module.text_encoder.parameters())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_warms_up_then_follows_its_schedule(schedule):
    f = lr_lambda(warmup_steps=10, total_steps=110, schedule=schedule, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    if schedule == "constant":
        assert f(50) == f(109) == 1.0
    else:
        assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)


def test_ema_tracks_the_weights_with_warmup_and_is_used_for_sampling():
    module = tiny_module(ema_decay=0.9)
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    before = module.ema.embed.weight.clone()
    module.update_ema(step=0)  # warm-up decay min(0.9, 1/10) = 0.1: moves 90% of the way
    expected = before + 0.9 * (module.generator.embed.weight - before)
    torch.testing.assert_close(module.ema.embed.weight, expected)
    assert module.sampling_generator is module.ema
    assert any(k.startswith("ema.") for k in module.state_dict())
    assert tiny_module(ema_decay=None).sampling_generator is not None


def test_ema_stays_float32_and_keeps_moving_when_the_module_is_cast_to_bf16():
    module = tiny_module(ema_decay=0.9999)
    keys = list(module.state_dict())
    module.to(torch.bfloat16)  # what Lightning's bf16-true does to the whole module
    assert module.generator.embed.weight.dtype == torch.bfloat16
    assert {p.dtype for p in module.ema.parameters()} == {torch.float32}
    assert list(module.state_dict()) == keys
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(0.5)
    before = module.ema.embed.weight.clone()
    module.update_ema(step=10**6)  # decay 0.9999: a step of 5e-5, which bf16 rounding would erase
    expected = before + 1e-4 * (module.generator.embed.weight.float() - before)
    torch.testing.assert_close(module.ema.embed.weight, expected)
    assert not torch.equal(module.ema.embed.weight, before)

    torch.set_default_dtype(torch.bfloat16)  # bf16-true's default inside predict_step
    try:
        images = module.log_images({"caption": ["a red circle", "two blue squares"]}, SamplingSettings(steps=2, cfg=2.0))
    finally:
        torch.set_default_dtype(torch.float32)
    samples = images["samples"]
    assert samples.shape == (2, 3, 32, 32) and samples.dtype == torch.float32 and torch.isfinite(samples).all()


def test_frozen_text_encoder_gets_no_gradient_and_stays_in_eval():
    module = tiny_module().train()
    assert not module.text_encoder.model.training and not module.ema.training
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    loss, _ = module._loss({"image": images, "caption": ["a red circle", "two squares"]})
    loss.backward()
    assert all(p.grad is None for p in module.text_encoder.parameters())
    assert any(p.grad is not None for p in module.generator.parameters())


def test_a_trainable_text_encoder_is_optimised_too():
    module = tiny_module()
    module.text_encoder = T5TextEncoder(config=TINY_T5, max_length=16, trainable=True)
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in optimised for p in module.text_encoder.parameters())
    before = [p.detach().clone() for p in module.text_encoder.parameters()]
    loss, _ = module._loss({"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a red circle", "two squares"]})
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, module.text_encoder.parameters()))


def test_adamw8bit_without_bitsandbytes_names_the_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install -e '.\[bnb\]'"):
        tiny_module(optimizer="adamw8bit")


def test_sampling_settings_are_kept_as_plain_data_and_drive_log_images():
    settings = SamplingSettings(steps=3, cfg=1.5, temperature=0.8, seed=4)
    module = tiny_module(sampling=settings)
    assert module.sampling == settings and module.hparams["sampling"] == dataclasses.asdict(settings)
    batch = {"caption": ["a red circle", "two squares"]}
    a = module.log_images(batch)["samples"]
    torch.testing.assert_close(module.log_images(batch, settings)["samples"], a)  # the module's own by default
    assert not torch.equal(module.log_images(batch, settings.replace(seed=5))["samples"], a)
    seen = {}
    sample = module.sampling_generator.sample
    module.sampling_generator.sample = lambda *args, **kwargs: seen.update(kwargs) or sample(*args, **kwargs)
    module.log_images(batch, settings.replace(temperature=0.1, cfg_schedule="constant", top_k=3))
    assert (seen["steps"], seen["cfg"], seen["temperature"], seen["cfg_schedule"], seen["top_k"]) == (
        3, 1.5, 0.1, "constant", 3)


def test_uint8_pixel_batches_give_the_tokens_and_loss_of_float_batches():
    module = tiny_module()
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # as WebDataModule batches
    floats = images_to_float(pixels)
    assert torch.equal(module._tokens({"image": pixels}), module._tokens({"image": floats}))
    losses = []
    for images in (pixels, floats):
        torch.manual_seed(1)  # the same masks and noise
        losses.append(module._loss({"image": images, "caption": ["a red circle", "two squares"]})[0])
    assert torch.equal(losses[0], losses[1])


def test_cached_tokens_are_encoded_once_per_key_and_equal_fresh_encodings():
    module = tiny_module(cache_tokens=True).train()
    encoded = []
    encode = module.tokenizer.encode
    module.tokenizer.encode = lambda images: encoded.append(len(images)) or encode(images)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    first = module._tokens({"image": images[:2], "key": ["a", "b"]})
    again = module._tokens({"image": images[[1, 0, 2]], "key": ["b", "a", "c"]})
    assert encoded == [2, 1]  # only the new key "c" is encoded the second time
    assert torch.equal(again[:2], first[[1, 0]])
    assert torch.equal(again, encode(images[[1, 0, 2]]))
    module.eval()  # validation batches are never cached
    module._tokens({"image": images[:1], "key": ["z"]})
    assert "z" not in module._token_cache
