"""Pure torch modules (no Lightning import here)."""

from .autoencoders import KLTokenizer, VQTokenizer
from .discriminator import PatchDiscriminator
from .generator import FluidGenerator
from .heads import DiffusionHead, LogitsHead
from .text import FrozenT5, TextAligner
from .tokenizers import ImageTokenizer, PaletteTokenizer, PixelPatchTokenizer

__all__ = [
    "DiffusionHead",
    "FluidGenerator",
    "FrozenT5",
    "ImageTokenizer",
    "KLTokenizer",
    "LogitsHead",
    "PaletteTokenizer",
    "PatchDiscriminator",
    "PixelPatchTokenizer",
    "TextAligner",
    "VQTokenizer",
]
