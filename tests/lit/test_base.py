"""What both LightningModules share (ModuleBase): a cast of the whole module (bf16-true) leaves the EMA
copy in float32 and the state dict in the same order; built from objects, the hyper-parameters leave the
submodules out, and built from a config (``from_config``), they are that config and rebuild the module."""

from __future__ import annotations

import torch
from torch import nn

from fluid_lightning.lit.base import ModuleBase
from fluid_lightning.lit.ema import make_ema

LINEAR = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3, "out_features": 2}}


class Averaged(ModuleBase):
    SUBMODULES = ("net",)

    def __init__(self, net: nn.Module, ema_decay: float | None = 0.9):
        super().__init__()
        self.save_hyperparameters(ignore=self.unsaved_arguments())
        self.net = net
        self.ema = make_ema(net) if ema_decay else None


def test_a_cast_of_the_module_leaves_the_ema_in_float32_and_the_state_dict_in_order():
    module = Averaged(nn.Linear(3, 2))
    keys = list(module.state_dict())
    assert module.to(torch.bfloat16) is module
    assert module.net.weight.dtype == torch.bfloat16 and module.ema.weight.dtype == torch.float32
    assert list(module.state_dict()) == keys
    module.to("cpu", torch.float64)
    assert module.net.weight.dtype == torch.float64 and module.ema.weight.dtype == torch.float32
    without = Averaged(nn.Linear(3, 2), ema_decay=None).to(torch.bfloat16)
    assert without.net.weight.dtype == torch.bfloat16


def test_hyper_parameters_leave_out_given_submodules_and_are_the_config_that_rebuilds_the_module():
    assert dict(Averaged(nn.Linear(3, 2), ema_decay=0.5).hparams) == {"ema_decay": 0.5}  # no pickled nn.Linear
    built = Averaged.from_config({"net": LINEAR, "ema_decay": 0.5})
    assert isinstance(built.net, nn.Linear) and built.net.out_features == 2
    assert {k: v for k, v in built.hparams.items() if not k.startswith("_")} == {"net": LINEAR, "ema_decay": 0.5}
    again = Averaged.from_config(dict(built.hparams))  # what checkpointing.load does with a checkpoint's
    again.load_state_dict(built.state_dict(), strict=True)
    assert torch.equal(again.net.weight, built.net.weight) and again.hparams == built.hparams
