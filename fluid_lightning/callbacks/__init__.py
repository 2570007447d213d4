"""Callbacks decide when and where (interval, rank, logger); the module provides what (`log_images`)."""

from .fid import FIDCallback
from .image_writer import ImageWriter
from .sample_grid import SampleGrid
from .shapes_eval import ShapesEvalCallback
from .throughput import Throughput

__all__ = ["FIDCallback", "ImageWriter", "SampleGrid", "ShapesEvalCallback", "Throughput"]
