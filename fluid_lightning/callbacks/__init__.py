"""Callbacks decide when and where (interval, rank, logger); the module provides what (``log_images``)."""

from .caption_use import CaptionUse
from .clip_score import CLIPScoreCallback
from .data_stats import DataStatsLogger
from .fid import FIDCallback
from .image_grid import ImageGrid
from .image_writer import ImageWriter
from .progress import LineProgress
from .reliability import LastAtEndCheckpoint, NonFiniteLossGuard, PreemptionCheckpoint
from .shapes_eval import ShapesEvalCallback
from .throughput import Throughput

__all__ = [
    "CaptionUse",
    "CLIPScoreCallback",
    "DataStatsLogger",
    "FIDCallback",
    "ImageGrid",
    "ImageWriter",
    "LastAtEndCheckpoint",
    "LineProgress",
    "NonFiniteLossGuard",
    "PreemptionCheckpoint",
    "ShapesEvalCallback",
    "Throughput",
]
