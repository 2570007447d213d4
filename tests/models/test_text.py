"""The T5 text encoder: frozen unless asked, loaded from a folder, left out of checkpoints when it is; the aligner."""

import pytest
import torch
from tiny import TINY_T5

from fluid_lightning.models import T5TextEncoder, TextAligner


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


@pytest.mark.parametrize("positions", [False, True])
def test_the_aligner_reads_word_order_only_with_text_positions(positions):
    """A caption's words in another order give the same aligned words, reordered, unless the aligner
    adds positions: then "a red circle and a blue square" differs from its colour-swapped twin even
    when the text features are a bag of words."""
    torch.manual_seed(0)
    aligner = TextAligner(text_dim=8, width=16, depth=1, num_heads=2, mlp_ratio=2.0, dropout=0.0, positions=positions)
    words = torch.randn(1, 6, 8)
    order = torch.tensor([0, 4, 2, 3, 1, 5])  # "red" and "blue" swap places
    mask = torch.ones(1, 6, dtype=torch.bool)
    aligned, _ = aligner(words, mask)
    reordered, _ = aligner(words[:, order], mask)
    assert torch.allclose(reordered, aligned[:, order], atol=1e-6) != positions
