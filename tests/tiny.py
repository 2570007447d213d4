"""Tiny models built in code for tests (no downloads)."""

from fluid_lightning.models import FluidGenerator

TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}


def tiny_generator(tokens: str = "continuous", order: str = "random", grid_size: int = 4, **overrides) -> FluidGenerator:
    kwargs = dict(
        tokens=tokens, order=order, grid_size=grid_size, token_dim=6, vocab_size=11, width=32, depth=2,
        num_heads=4, dropout=0.0, text_dim=TINY_T5["d_model"], aligner_depth=1, head_width=32, head_depth=2,
        num_sampling_timesteps=10,
    )
    kwargs.update(overrides)
    return FluidGenerator(**kwargs)
