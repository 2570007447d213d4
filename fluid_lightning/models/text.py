"""Text side of the model: a Hugging Face T5 encoder (frozen unless asked) and the trainable aligner
that adapts its output to the image transformer, with a learned null condition for classifier-free
guidance."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from torch import Tensor, nn
from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from .frozen import keep_out_of_checkpoints
from .transformer import Block, sincos_1d


class T5TextEncoder(nn.Module):
    """T5 encoder + tokenizer, frozen unless ``trainable`` (Fluid keeps T5-XXL frozen).

    ``pretrained`` is a local directory or a hub id (T5-XXL in the Fluid paper); its weights are
    reloaded from there and therefore left out of checkpoints. ``config`` instead builds a randomly
    initialised ``T5Config(**config)`` that needs no files — for tests and tiny CPU runs; those
    weights are saved with the checkpoint. Its tokenizer is byte-level (ByT5), or, given ``words``,
    word-level over them (lower-cased, split at whitespace; other words map to one unknown token):
    one token per word, as T5's own subword tokenizer gives for common words, where bytes leave a
    small model to learn spelling first.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        max_length: int = 128,
        trainable: bool = False,
        words: list[str] | None = None,
    ):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("T5TextEncoder needs exactly one of `pretrained` (path or hub id) or `config` (a T5Config dict)")
        if words is not None and pretrained is not None:
            raise ValueError("T5TextEncoder: `words` builds a tokenizer for a random T5 (`config`); a pretrained T5 "
                             "brings its own")
        self.pretrained = pretrained
        self.max_length = max_length
        self.trainable = trainable
        if pretrained is not None:
            try:
                self.model = T5EncoderModel.from_pretrained(pretrained)
                self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
            except OSError as err:
                raise OSError(
                    f"could not load T5 from {pretrained!r}: give a local folder holding config.json, weights and "
                    "tokenizer files (hub ids need network access and HF_HUB_OFFLINE unset)"
                ) from err
        else:
            self.tokenizer = ByT5Tokenizer() if words is None else word_tokenizer(words)
            self.model = T5EncoderModel(T5Config(**{"vocab_size": max(384, len(self.tokenizer)), **config}))
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()
        if pretrained is not None:
            keep_out_of_checkpoints(self, "model")
            self.weights_in_checkpoint = trainable  # fine-tuned weights are not what the path holds

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def train(self, mode: bool = True) -> T5TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # a frozen encoder never runs dropout
        return self

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """captions → (embeddings [B, L, dim], mask [B, L] with True on real tokens)."""
        # L rounded up to a multiple of 8: fewer distinct shapes for torch.compile to specialise on, and
        # the attention mask stays aligned for CUDA's memory-efficient SDPA kernel under compile.
        batch = self.tokenizer(
            list(captions), padding="longest", pad_to_multiple_of=8, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask.bool()


class TextAligner(nn.Module):
    """Projects frozen text features to the transformer width and refines them with a few
    trainable blocks (Fluid's "text aligner"); owns the learned null condition for CFG.

    ``positions``: adds a fixed sin-cos embedding of each caption token's index before the blocks, whose
    attention is otherwise blind to word order."""

    def __init__(self, text_dim: int, width: int, depth: int, num_heads: int, mlp_ratio: float, dropout: float,
                 positions: bool = False):
        super().__init__()
        self.positions = positions
        self.proj = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio, dropout, cross_attention=False) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.null, std=0.02)

    def forward(self, text: Tensor, text_mask: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns (context [B, L, width], mask [B, L]). Rows where ``drop`` is True get the null
        condition: one learned token at position 0, the rest masked out."""
        key_mask = text_mask[:, None, None, :]
        x = self.proj(text)
        if self.positions:
            x = x + sincos_1d(torch.arange(x.shape[1]), x.shape[-1]).to(x)
        for block in self.blocks:
            x = block(x, self_mask=key_mask)
        x = self.norm(x)
        if drop is None:
            drop = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        # Always through torch.where, even with nothing dropped: the null token then gets a (zero)
        # gradient every step, so all ranks agree on which parameters have gradients (DDP/FSDP2).
        null_ctx = self.null.to(x.dtype).expand_as(x)
        null_mask = torch.zeros_like(text_mask)
        null_mask[:, 0] = True
        x = torch.where(drop[:, None, None], null_ctx, x)
        mask = torch.where(drop[:, None], null_mask, text_mask)
        return x, mask


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` with T5's special tokens (pad 0, end 1, unknown 2)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = Lowercase()
    backend.pre_tokenizer = WhitespaceSplit()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
