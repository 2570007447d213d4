"""CLIP score (torchmetrics) with a Hugging Face CLIP from a local folder or hub id.

torchmetrics' CLIPScore accepts only its list of hub ids or a callable returning (model,
processor); and under transformers 5 ``get_image_features``/``get_text_features`` return a
ModelOutput where torchmetrics expects a tensor. `make_clip_score` loads the model itself and
hands torchmetrics an adapter that returns the projected embeddings as tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.multimodal.clip_score import CLIPScore


class _TensorFeatures(nn.Module):
    """A CLIPModel whose feature methods return tensors, as torchmetrics expects."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads the text length limit from it

    def get_image_features(self, *args, **kwargs) -> Tensor:
        return _embeddings(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> Tensor:
        return _embeddings(self.model.get_text_features(*args, **kwargs))


def _embeddings(output) -> Tensor:
    return output if isinstance(output, Tensor) else output.pooler_output


def load_clip(model: str) -> tuple[nn.Module, object]:
    """(CLIPModel, CLIPProcessor) from a local folder or a hub id, with a one-line error naming
    what to pass when neither loads."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(model).eval(), CLIPProcessor.from_pretrained(model)
    except OSError as err:
        where = "folder" if Path(model).exists() else "local folder or reachable hub id"
        raise OSError(
            f"could not load CLIP from {model!r}: pass a {where} holding config.json, weights, tokenizer and "
            "preprocessor files (e.g. a save_pretrained() of openai/clip-vit-large-patch14)"
        ) from err


def make_clip_score(model: str) -> CLIPScore:
    """CLIPScore over images in [0, 1] ([B, 3, H, W]) and captions; see `clip_score_update`."""
    clip, processor = load_clip(model)
    adapter = _TensorFeatures(clip)
    return CLIPScore(model_name_or_path=lambda: (adapter, processor), sync_on_compute=True)


def clip_score_update(metric: CLIPScore, images: Tensor, captions: list[str]) -> None:
    """Feed [0, 1] float images; CLIP's processor expects 0–255 pixel values."""
    metric.update((images.clamp(0, 1) * 255).round().to(torch.uint8), list(captions))
