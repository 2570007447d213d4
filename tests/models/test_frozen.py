"""Frozen pretrained submodules stay out of checkpoints: their weights leave the state dict (at any
nesting depth), their absence is accepted on a strict load while any other missing key is still
reported, and ``weights_in_checkpoint`` puts them back for fine-tuning. For T5 and the VAEs:
tests/models/test_text.py and test_autoencoders.py."""

from __future__ import annotations

import torch
from torch import nn

from fluid_lightning.models.frozen import keep_out_of_checkpoints


class Wrapper(nn.Module):
    """A loaded network (``model``) and a small part of our own."""

    def __init__(self):
        super().__init__()
        self.model = nn.Linear(2, 2)
        self.scale = nn.Parameter(torch.ones(1))
        keep_out_of_checkpoints(self)


def test_loaded_weights_leave_the_state_dict_and_loading_without_them_is_strict_about_the_rest():
    outer = nn.Sequential(nn.Linear(2, 2), Wrapper())
    assert set(outer.state_dict()) == {"0.weight", "0.bias", "1.scale"}
    assert outer.load_state_dict(outer.state_dict(), strict=True).missing_keys == []
    result = outer.load_state_dict({"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)}, strict=False)
    assert result.missing_keys == ["1.scale"]
    outer[1].weights_in_checkpoint = True  # being fine-tuned: kept
    assert set(outer.state_dict()) == {"0.weight", "0.bias", "1.model.weight", "1.model.bias", "1.scale"}
