"""Frozen pretrained submodules (T5, a loaded VAE) stay out of checkpoints: they are reloaded from
the path or hub id they came from, so a generator checkpoint does not carry gigabytes of copies."""

from __future__ import annotations

from typing import Any

from torch import nn


def keep_out_of_checkpoints(module: nn.Module, name: str = "model") -> None:
    """Drop ``module.<name>``'s weights from ``module``'s state dict, and accept their absence when
    loading one. Setting ``module.weights_in_checkpoint = True`` later (e.g. while fine-tuning them)
    keeps them in saved state dicts again."""

    def drop(mod: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
        if not getattr(mod, "weights_in_checkpoint", False):
            for key in [k for k in state_dict if k.startswith(f"{prefix}{name}.")]:
                del state_dict[key]

    def ignore_missing(mod: nn.Module, incompatible: Any) -> None:
        # Keys arrive prefixed from wherever load_state_dict was called, so match on the suffix.
        own = {f"{name}.{key}" for key in getattr(mod, name).state_dict(keep_vars=True)}
        incompatible.missing_keys[:] = [
            k for k in incompatible.missing_keys if not any(k == o or k.endswith("." + o) for o in own)
        ]

    module._register_state_dict_hook(drop)
    module.register_load_state_dict_post_hook(ignore_missing)
