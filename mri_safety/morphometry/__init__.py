"""Volumes across visits: brain and ventricle volume (mm^3), spinal cord
cross-sectional area at C2-C3 (mm^2). See :mod:`mri_safety.morphometry.volumes`."""

from mri_safety.morphometry.volumes import (
    BrainVolumes,
    CordArea,
    brain_volumes,
    cord_area,
    cord_csa_per_slice,
    mask_volume_mm3,
    ventricle_mask,
)

__all__ = ["BrainVolumes", "CordArea", "brain_volumes", "cord_area", "cord_csa_per_slice",
           "mask_volume_mm3", "ventricle_mask"]
