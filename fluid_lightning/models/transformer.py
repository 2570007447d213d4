"""Transformer building blocks: SDPA self-attention with an optional KV cache, cross-attention
to text, MLP, pre-norm blocks, and 2-D position embeddings.

Dropout on the CPU draws its keep mask from 15 random bits per element (``keep_mask``): torch's own
CPU dropout draws a Bernoulli per element, which costs as much as the attention around it. On other
devices dropout is torch's. Attention with dropout on the CPU is written out (SDPA's fused CPU
kernel has no dropout, so it falls back to the same matmul-softmax-matmul path, with the slow mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LayerCache:
    """Per-block decoding state: self-attention keys/values grown one step at a time (raster order)
    and the text keys/values, which do not change during sampling and are projected once. Random
    order re-reads every token each step, so its cache keeps the text keys/values only
    (``self_attention=False``)."""

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_kv: tuple[Tensor, Tensor] | None = None
    self_attention: bool = True

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.self_k is None:
            self.self_k, self.self_v = k, v
        else:
            self.self_k = torch.cat([self.self_k, k], dim=2)
            self.self_v = torch.cat([self.self_v, v], dim=2)
        return self.self_k, self.self_v


@dataclass
class KVCache:
    layers: list[LayerCache] = field(default_factory=list)

    @classmethod
    def empty(cls, depth: int, self_attention: bool = True) -> KVCache:
        return cls([LayerCache(self_attention=self_attention) for _ in range(depth)])

    @property
    def length(self) -> int:
        k = self.layers[0].self_k
        return 0 if k is None else k.shape[2]


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    b, t, c = x.shape
    return x.view(b, t, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Bool mask with P(True) = 1 - p (to 1/32768), 15 random bits per element from the global stream.

    An int32 ``random_()`` fills [0, 2^31) from one 32-bit draw per word; both 16-bit halves of a word,
    masked to 15 bits, are uniform. ``randint`` over the full 32-bit range needs a 64-bit draw per word
    and takes about twice as long."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()
    return (words.view(torch.int16)[:n].view(shape) & 0x7FFF) >= round(p * 32768)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False,
              dropout_p: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention`` (``mask``: bool, True = attend), with fast dropout on the CPU."""
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # scaling q: a quarter of the scores' size
    if causal:
        causal_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        mask = causal_mask if mask is None else mask & causal_mask
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return dropout(scores.softmax(dim=-1), dropout_p, True) @ v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}; pick a divisor of the width")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, causal: bool = False, cache: LayerCache | None = None
    ) -> Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is not None and cache.self_attention:
            past = 0 if cache.self_k is None else cache.self_k.shape[2]
            k, v = cache.append(k, v)
            if causal and q.shape[2] > 1:
                # Prefill of several positions: position past+i sees keys 0..past+i.
                q_pos = torch.arange(past, past + q.shape[2], device=x.device)
                mask = q_pos[:, None] >= torch.arange(k.shape[2], device=x.device)[None, :]
            causal = False  # a single new query may see every cached key
        out = attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(_merge_heads(out)))


class CrossAttention(nn.Module):
    """Image tokens (queries) read the text sequence (keys/values); text padding is masked."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor | None, cache: LayerCache | None = None) -> Tensor:
        q = _split_heads(self.q(x), self.num_heads)
        if cache is not None and cache.cross_kv is not None:
            k, v = cache.cross_kv
        else:
            k, v = (_split_heads(t, self.num_heads) for t in self.kv(ctx).chunk(2, dim=-1))
            if cache is not None:
                cache.cross_kv = (k, v)
        mask = None if ctx_mask is None else ctx_mask[:, None, None, :]
        out = attention(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(_merge_heads(out)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention to text, MLP."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, cross_attention: bool = True
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim) if cross_attention else None
        self.cross = CrossAttention(dim, num_heads, dropout) if cross_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(
        self,
        x: Tensor,
        ctx: Tensor | None = None,
        ctx_mask: Tensor | None = None,
        self_mask: Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=self_mask, causal=causal, cache=cache)
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), ctx, ctx_mask, cache=cache)
        return x + self.mlp(self.norm2(x))


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Fixed sine-cosine embedding [len(positions), dim] of 1-D positions (Transformer, MAE)."""
    if dim % 2:
        raise ValueError(f"width {dim} must be even for sin-cos position embeddings")
    half = dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / half))
    angles = positions.to(torch.float64).reshape(-1, 1) * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid_size: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine embedding [grid_size², dim] (MAE): half the channels encode the row,
    half the column, so a token knows where it sits on the image grid."""
    if dim % 4:
        raise ValueError(f"width {dim} must be divisible by 4 for 2-D sin-cos position embeddings")
    coords = torch.arange(grid_size)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], dim=1)


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform linears with zero bias (MAR/MAE convention), unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Block",
    "Dropout",
    "CrossAttention",
    "KVCache",
    "LayerCache",
    "MLP",
    "SelfAttention",
    "init_weights",
    "param_count",
    "sincos_2d",
]
