"""Callbacks decide when and where (interval, rank, logger); the module provides what (`log_images`)."""

from .clip_score import CLIPScoreCallback
from .fid import FIDCallback
from .image_writer import ImageWriter
from .reliability import NonFiniteLossGuard, PreemptionCheckpoint
from .sample_grid import ReconstructionGrid, SampleGrid
from .shapes_eval import ShapesEvalCallback
from .throughput import Throughput

__all__ = [
    "CLIPScoreCallback",
    "FIDCallback",
    "ImageWriter",
    "NonFiniteLossGuard",
    "PreemptionCheckpoint",
    "ReconstructionGrid",
    "SampleGrid",
    "ShapesEvalCallback",
    "Throughput",
]
