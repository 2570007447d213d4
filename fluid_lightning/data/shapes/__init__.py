"""The shapes world: compositional scenes a CPU model can learn, scored like GenEval.

A scene is a `SceneSpec` (which objects, which colours, which relation, a layout
seed); `render_scene` draws it deterministically and returns the image, the caption
and GenEval-format metadata plus the drawn objects' boxes. Captions follow
GenEval's prompt templates for its six tags. Some colour×shape pairs, position
triplets, counts and object pairs are *held out*: training scenes never name them
(held-out colour×shape pairs are never even drawn), and they form the compositional
part of `evaluation_suite()`.

One module per job: `world` (scenes, captions, metadata, held-out prompts), `render` (drawing),
`suite` (the evaluation prompts) and `datamodule` (Dataset and LightningDataModule). Everything is
importable from here.
"""

from .datamodule import ShapesDataModule, ShapesDataset, collate_images
from .render import image_to_tensor, layout_boxes, render_scene
from .suite import evaluation_suite
from .world import (
    BACKGROUND,
    HELDOUT_COLOR_SHAPES,
    HELDOUT_COUNTS,
    HELDOUT_POSITIONS,
    HELDOUT_TWO_OBJECTS,
    MAX_COUNT,
    SHAPES,
    SceneSpec,
    caption_for,
    geneval_metadata,
    is_heldout,
    sample_scene_spec,
    scene_spec_for_index,
    spec_from_dict,
)

__all__ = [
    "BACKGROUND", "HELDOUT_COLOR_SHAPES", "HELDOUT_COUNTS", "HELDOUT_POSITIONS", "HELDOUT_TWO_OBJECTS", "MAX_COUNT",
    "SHAPES", "SceneSpec", "ShapesDataModule", "ShapesDataset", "caption_for", "collate_images", "evaluation_suite",
    "geneval_metadata", "image_to_tensor", "is_heldout", "layout_boxes", "render_scene", "sample_scene_spec",
    "scene_spec_for_index", "spec_from_dict",
]
