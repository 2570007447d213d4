"""Thin LightningModules."""

from .generator_module import GeneratorModule
from .tokenizer_module import TokenizerModule

__all__ = ["GeneratorModule", "TokenizerModule"]
