"""Thin LightningModules."""

from .generator_module import GeneratorModule

__all__ = ["GeneratorModule"]
