"""Datasets: the shapes world (rendered on the fly or to shards) and WebDataset shards of images or latents."""

from .shapes import ShapesDataModule, render_scene
from .webdata import WebDataModule

__all__ = ["ShapesDataModule", "WebDataModule", "render_scene"]
