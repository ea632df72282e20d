"""Brain masks for change detection: those of the preprocessing stage.

The masks, their plausibility tests and the morphological fallback live in
:mod:`mri_safety.preprocess.brainmask` (the brain volumes of
:mod:`mri_safety.morphometry` use the same masks); this module gives change
detection its names for them and the array helpers it shares.
"""

from mri_safety.preprocess.brainmask import (
    MaskSet,
    arr,
    brain_mask,
    dilate_mm,
    erode_mm,
    img_like,
)

__all__ = ["MaskSet", "arr", "brain_mask", "dilate_mm", "erode_mm", "img_like"]
