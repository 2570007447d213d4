"""GeneratorModule and its parts: optimiser groups, lr schedule, EMA, frozen text encoder, tokenizers."""

import pytest
import torch
from tiny import TINY_T5, tiny_generator

from fluid_lightning.lit.generator_module import GeneratorModule, lr_lambda
from fluid_lightning.models import FrozenT5, PaletteTokenizer, PixelPatchTokenizer
from fluid_lightning.models.tokenizers import patchify, unpatchify


def tiny_module(**kwargs) -> GeneratorModule:
    torch.manual_seed(0)
    return GeneratorModule(
        tiny_generator(grid_size=4, token_dim=4 * 4 * 3),
        PixelPatchTokenizer(image_size=16, patch_size=4),
        FrozenT5(config=TINY_T5),
        **kwargs,
    )


def test_no_weight_decay_on_biases_norms_embeddings_and_learned_tokens():
    module = tiny_module()
    decay, no_decay = (g["params"] for g in module.configure_optimizers()["optimizer"].param_groups)
    names = {id(p): n for n, p in module.generator.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay}
    assert all(p.ndim == 2 for p in decay)
    for expected in ("special_token", "pos_embed", "text.null", "norm.weight", "blocks.0.attn.qkv.bias"):
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
        images = module.log_images(["a red circle", "two blue squares"], num_steps=2, cfg=2.0)
    finally:
        torch.set_default_dtype(torch.float32)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32 and torch.isfinite(images).all()


def test_frozen_text_encoder_gets_no_gradient_and_stays_in_eval():
    module = tiny_module().train()
    assert not module.text_encoder.model.training and not module.ema.training
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    loss, _ = module._loss({"image": images, "caption": ["a red circle", "two squares"]})
    loss.backward()
    assert all(p.grad is None for p in module.text_encoder.parameters())
    assert any(p.grad is not None for p in module.generator.parameters())


def test_pretrained_t5_loads_from_a_folder_and_is_left_out_of_checkpoints(tmp_path):
    source = FrozenT5(config=TINY_T5)
    source.model.save_pretrained(tmp_path / "t5")
    source.tokenizer.save_pretrained(tmp_path / "t5")
    loaded = FrozenT5(pretrained=str(tmp_path / "t5"))
    captions = ["a photo of a cat", "x"]
    torch.testing.assert_close(loaded(captions)[0], source(captions)[0])
    assert not any(k.startswith("model.") for k in loaded.state_dict())
    holder = torch.nn.Module()
    holder.text = loaded
    assert holder.load_state_dict(holder.state_dict(), strict=True).missing_keys == []


def test_t5_from_a_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="local folder"):
        FrozenT5(pretrained=str(tmp_path / "absent"))


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


def test_adamw8bit_without_bitsandbytes_names_the_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install -e '.\[bnb\]'"):
        tiny_module(optimizer="adamw8bit")
