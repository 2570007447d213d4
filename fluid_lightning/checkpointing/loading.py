"""The one way a trained module comes back from a file, used by every entry point (``sample``,
``evaluate``, ``tokenizer``, ``FluidPipeline``, notebooks): ``load(cls, path)``.

It takes a ``.ckpt`` written by ``fit`` or a ``.safetensors`` written by ``checkpoint consolidate``,
reads it as tensors and plain data only, rebuilds the module from the config stored with it, and
says in one line what is wrong when it cannot (not a checkpoint, the other kind of module, code
inside, a sharded directory). Configs written by earlier versions are upgraded first
(``upgrade_hparams``), so old checkpoints keep loading.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, TypeVar

from .consolidate import read_consolidated
from .files import safe_load

M = TypeVar("M")

_T5_OLD = "fluid_lightning.models.text.FrozenT5"
_T5_NEW = "fluid_lightning.models.text.T5TextEncoder"


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A module config written by an earlier version, in today's names (a copy; current ones pass
    unchanged): ``sample_steps/cfg/temperature`` → ``sampling``, the generator's ``tokens`` →
    ``token_kind`` and ``num_sampling_timesteps`` → ``diffusion_steps``, ``FrozenT5(freeze)`` →
    ``T5TextEncoder(trainable)``."""
    hparams = copy.deepcopy(dict(hparams))
    old_sampling = {new: hparams.pop(old) for old, new in
                    (("sample_steps", "steps"), ("sample_cfg", "cfg"), ("sample_temperature", "temperature"))
                    if old in hparams}
    if old_sampling:
        hparams["sampling"] = {**old_sampling, **dict(hparams.get("sampling") or {})}
    generator = hparams.get("generator")
    for old, new in (("tokens", "token_kind"), ("num_sampling_timesteps", "diffusion_steps")):
        if isinstance(generator, dict) and old in generator.get("init_args", {}):
            generator["init_args"][new] = generator["init_args"].pop(old)
    text = hparams.get("text_encoder")
    if isinstance(text, dict) and text.get("class_path") == _T5_OLD:
        text["class_path"] = _T5_NEW
        args = text.setdefault("init_args", {})
        if "freeze" in args:
            args["trainable"] = not args.pop("freeze")
    return hparams


def _check_class(path: Path, class_path: str | None, cls: type) -> None:
    if not class_path or class_path.rsplit(".", 1)[-1] == cls.__name__:
        return
    module_name, _, name = class_path.rpartition(".")
    found = getattr(sys.modules.get(module_name), name, None)  # only classes already imported: no code runs
    if not (isinstance(found, type) and issubclass(found, cls)):
        raise ValueError(f"{path} is a {name} checkpoint; this needs a {cls.__name__} one")


def load(cls: type[M], path: str | Path) -> M:
    """``cls`` (a module with ``from_config``) with the weights of ``path``, on the CPU, in eval mode."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a sharded (FSDP2) checkpoint; make one file first: "
                                f"python -m fluid_lightning checkpoint consolidate {path} model.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the .ckpt file written by `fit` (see runs/)")
    if path.suffix == ".safetensors":
        config, state = read_consolidated(path)
    else:
        checkpoint = safe_load(path)
        config, state = dict(checkpoint.get("hyper_parameters") or {}), checkpoint.get("state_dict", {})
        _check_class(path, config.pop("_class_path", None), cls)
        config.pop("_instantiator", None)
        if not config:
            raise ValueError(f"{path} holds no model config (hyper_parameters): it was not written by `fit` from a "
                             "config; rebuild the module in code and load its state_dict instead")
    module = cls.from_config(upgrade_hparams(config))
    module.load_state_dict(state, strict=True)
    return module.eval()
