"""How a FluidGenerator is spread over processes (torchtitan style: one ``parallelize`` per model).

``parallelize`` applies, in this order and each only when asked:

1. activation checkpointing per transformer block (image blocks and text-aligner blocks): the
   block's activations are recomputed in backward instead of stored, trading ~30% compute for
   memory that grows with depth × tokens;
2. ``torch.compile`` per block, the diffusion head's residual blocks included (compiling blocks, not
   the whole generator, keeps graphs small and shared by identical blocks, and leaves the
   masking/sampling Python of the generator eager; the head's blocks run on batch_mul x the masked
   tokens, where the fused LayerNorm/adaLN/gate elementwise work is the larger part);
3. FSDP2 ``fully_shard`` per block, then on the generator root (embeddings, aligner projection,
   norm and head form the root's group). Sharding each block separately lets FSDP all-gather one
   block at a time, so peak memory holds about one unsharded block plus the shards.

The composable ``checkpoint`` and ``nn.Module.compile`` keep parameter names unchanged, so state
dicts and checkpoints look the same with or without them.

Only the generator (and its EMA copy) is sharded by default: the frozen text encoder and tokenizer
are replicated, since they hold no optimiser state; ``shard_text_encoder`` shards a large frozen T5
and ``shard_tokenizer`` a learned VAE/VQ (each then all-gathers its weights block by block).
Never shard a module that holds a metric's feature network (mixed Tensor/DTensor errors).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from .models.generator import FluidGenerator


def transformer_blocks(generator: FluidGenerator) -> list[nn.Module]:
    """The repeated blocks: image transformer blocks, then text-aligner blocks."""
    return [*generator.blocks, *getattr(generator.text, "blocks", [])]


def head_blocks(generator: FluidGenerator) -> list[nn.Module]:
    """The diffusion head's residual blocks (none for a discrete head)."""
    return list(getattr(getattr(generator.head, "net", None), "blocks", []))


def parallelize(
    generator: FluidGenerator,
    mesh: DeviceMesh | None = None,
    activation_checkpointing: bool = False,
    compile: bool = False,
    reshard_after_forward: bool = True,
) -> FluidGenerator:
    """Apply activation checkpointing, compile and FSDP2 sharding in place; returns ``generator``.

    ``mesh`` is the 1-D data-parallel mesh to shard over; ``None`` (single process or DDP) skips
    sharding. ``reshard_after_forward=False`` keeps the root unsharded between forward and backward
    (less communication, more memory), as torchtitan does for the last block.
    """
    blocks = transformer_blocks(generator)
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    if compile:
        for block in [*blocks, *head_blocks(generator)]:
            block.compile()
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
        fully_shard(generator, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return generator


def shard_text_encoder(text_encoder: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard a frozen Hugging Face T5 encoder per block, then its root (for T5-XXL, 4.7B frozen
    parameters are worth sharding; small encoders are cheaper replicated)."""
    from torch.distributed.fsdp import fully_shard

    model = text_encoder.model
    for block in model.encoder.block:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return text_encoder


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


@contextmanager
def gathered(module: nn.Module) -> Iterator[nn.Module]:
    """Unshard the root group of an FSDP2 module for code that does not go through ``forward``
    (``generator.sample`` calls the aligner, head and embeddings directly). The blocks gather
    themselves through their own forward hooks. Every rank must enter (it is a collective)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


def shard_tokenizer(tokenizer: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard a frozen diffusers VAE/VQ tokenizer (``tokenizer.model``): each encoder/decoder block, then
    the encoder, decoder, quant convs and VQ codebook, then the root. Pixel-patch tokenizers have no
    weights and are refused."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    model = getattr(tokenizer, "model", None)
    if model is None or not any(True for _ in model.parameters()):
        raise ValueError(f"shard_tokenizer: {type(tokenizer).__name__} has no weights to shard; "
                         "set shard_tokenizer: false")
    # Every part the tokenizer calls on its own (VQ decoding runs quantize.get_codebook_entry,
    # post_quant_conv and decoder directly) is its own group, so its weights are gathered on the call.
    parts = [getattr(model, name, None) for name in ("encoder", "decoder", "quant_conv", "post_quant_conv", "quantize")]
    for unit in [*model.encoder.down_blocks, *model.decoder.up_blocks, *parts]:
        if unit is not None and any(True for _ in unit.parameters()):
            fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for owner, method in ((model, "encode"), (model, "decode"), (parts[-1], "get_codebook_entry")):
        if owner is not None and hasattr(owner, method):  # called instead of forward: gather for them too
            register_fsdp_forward_method(owner, method)
    return tokenizer
