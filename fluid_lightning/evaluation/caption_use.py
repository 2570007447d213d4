"""How much a generator uses its caption: two numbers any text-to-image run can log.

- ``shuffle_gap``: the training loss with the captions shuffled within the batch, minus the
  loss with the true captions, on the same masks, timesteps and noise. A model that ignores its caption
  gives 0; one that reads it gives more the more the caption tells about the image.
- ``condition_spread``: with nothing revealed, the transformer's output (the head's condition) for each
  caption; its standard deviation across captions, per position and channel, over its overall standard
  deviation. 0 means every caption gets the same condition ("some object, somewhere, any colour").
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.generator import FluidGenerator


@torch.no_grad()
def shuffle_gap(generator: FluidGenerator, tokens: Tensor, text: Tensor, text_mask: Tensor,
                seed: int = 0) -> tuple[float, float]:
    """(loss with true captions, loss with the captions shuffled within the batch), both with the draws
    of ``seed``, so their difference is the caption's worth and not sampling noise. The shuffle is a
    seeded random permutation, not a rotation: a batch sorted by caption keeps most captions in place
    under a rotation."""
    order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed)).to(text.device)
    losses = []
    for t, m in ((text, text_mask), (text[order], text_mask[order])):
        losses.append(float(generator(tokens, t, m, rng=torch.Generator().manual_seed(seed))))
    return losses[0], losses[1]


def first_of_each(captions: list[str]) -> list[int]:
    """The index of each distinct caption's first occurrence: the rows to give `condition_spread`."""
    return sorted({caption: i for i, caption in reversed(list(enumerate(captions)))}.values())


@torch.no_grad()
def condition_spread(generator: FluidGenerator, text: Tensor, text_mask: Tensor) -> float:
    """How far the condition with nothing revealed moves across the given captions (see above); give
    each caption once. Fewer than two captions give 0."""
    if text.shape[0] < 2:
        return 0.0
    ctx, ctx_mask = generator.encode_text(text, text_mask)
    z = generator.blank_conditions(ctx, ctx_mask).float()
    return float(z.std(dim=0).mean() / z.std().clamp_min(1e-12))
