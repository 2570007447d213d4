"""The T5 text encoder: frozen unless asked, loaded from a folder, left out of checkpoints when it is."""

import pytest
import torch
from tiny import TINY_T5

from fluid_lightning.models import T5TextEncoder


def test_a_frozen_encoder_gets_no_gradient_and_stays_in_eval_and_a_trainable_one_learns():
    frozen = T5TextEncoder(config=TINY_T5).train()
    assert not frozen.model.training
    text, _ = frozen(["a red circle", "two squares"])
    assert not text.requires_grad
    trainable = T5TextEncoder(config=TINY_T5, trainable=True).train()
    assert trainable.model.training
    trainable(["a red circle"])[0].sum().backward()
    assert any(p.grad is not None for p in trainable.parameters())


def test_pretrained_t5_loads_from_a_folder_and_is_left_out_of_checkpoints_unless_trained(tmp_path):
    source = T5TextEncoder(config=TINY_T5)
    source.model.save_pretrained(tmp_path / "t5")
    source.tokenizer.save_pretrained(tmp_path / "t5")
    loaded = T5TextEncoder(pretrained=str(tmp_path / "t5"))
    captions = ["a photo of a cat", "x"]
    torch.testing.assert_close(loaded(captions)[0], source(captions)[0])
    assert not any(k.startswith("model.") for k in loaded.state_dict())
    holder = torch.nn.Module()
    holder.text = loaded
    assert holder.load_state_dict(holder.state_dict(), strict=True).missing_keys == []
    tuned = T5TextEncoder(pretrained=str(tmp_path / "t5"), trainable=True)
    assert any(k.startswith("model.") for k in tuned.state_dict())  # fine-tuned weights are not the folder's


def test_t5_from_a_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="local folder"):
        T5TextEncoder(pretrained=str(tmp_path / "absent"))
