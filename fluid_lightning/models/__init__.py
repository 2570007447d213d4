"""Pure torch modules (no Lightning import here)."""

from .autoencoders import KLTokenizer, VQTokenizer
from .discriminator import PatchDiscriminator
from .generator import FluidGenerator
from .heads import DiffusionHead, LogitsHead
from .text import T5TextEncoder, TextAligner
from .tokenizers import ImageTokenizer, PaletteTokenizer, PixelPatchTokenizer

__all__ = [
    "DiffusionHead",
    "FluidGenerator",
    "ImageTokenizer",
    "KLTokenizer",
    "LogitsHead",
    "PaletteTokenizer",
    "PatchDiscriminator",
    "PixelPatchTokenizer",
    "T5TextEncoder",
    "TextAligner",
    "VQTokenizer",
]
