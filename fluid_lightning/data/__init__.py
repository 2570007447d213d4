"""Datasets: the shapes world (rendered on the fly or to shards) and WebDataset shards of images or latents."""

from .shapes import ShapesDataModule, render_scene
from .webdata import DataStatsLogger, WebDataModule

__all__ = ["DataStatsLogger", "ShapesDataModule", "WebDataModule", "render_scene"]
