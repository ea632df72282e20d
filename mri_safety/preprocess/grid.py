"""Analysis grid: images much finer than the detection resolves are analysed at 1 mm.

A 3D T1 at 0.7 mm holds 40 M voxels (0.5 mm 3D FLAIR: 80 M). Change detection
smooths both visits with a Gaussian of 1 mm sigma (2.4 mm FWHM) before it
subtracts, and its smallest lesion of interest is 3 mm across, so voxels finer
than about 1 mm carry nothing the detection uses; they cost time and memory in
proportion (measured on the real 0.7 mm 3D T1: 4.8 GB and 3-4 min per pair on
the native grid; benchmarks/detect_3d.py). Such an image is therefore
resampled, once, when it is read for analysis:

* the rule: voxel volume below :data:`MIN_VOXEL_MM3` (0.5 mm3); then every axis
  finer than :data:`ANALYSIS_MM` (1 mm) becomes 1 mm (coarser axes are kept, so
  a 0.5 x 0.5 x 1 mm sagittal 3D FLAIR becomes 1 mm isotropic). Images of 0.5
  mm3 or more (every clinical 2D series, 1 mm isotropic 3D, 0.8 mm cord
  images) are used as they are, so their results do not change.
* anti-aliasing: a Gaussian whose FWHM adds up with the native voxel to the new
  one (``sigma = sqrt(new^2 - native^2) / 2.355`` per axis, world mm), then
  linear interpolation.
* geometry: same direction cosines; the new grid starts at the native grid's
  outer edge (continuous index -0.5) and holds ``floor(n x native / new)``
  voxels per axis, so every new voxel centre lies inside the native image.

The outputs of a comparison are brought back to the native baseline grid
(:func:`mri_safety.change.compare.write_outputs`), so file contracts keep the
native voxel space. Geometry in SimpleITK (LPS) conventions; spacing in mm.
"""

from __future__ import annotations

import math

import SimpleITK as sitk

#: images with a smaller voxel volume (mm3) are analysed on the coarser grid
MIN_VOXEL_MM3 = 0.5
#: voxel side (mm) of the analysis grid along axes finer than it
ANALYSIS_MM = 1.0
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def analysis_spacing(spacing_mm: tuple[float, ...]) -> tuple[float, ...] | None:
    """Spacing (mm) of the analysis grid for an image of ``spacing_mm``, or None when
    the image is analysed on its own grid.

    >>> analysis_spacing((0.7, 0.667, 0.667))
    (1.0, 1.0, 1.0)
    >>> analysis_spacing((0.5, 0.5, 1.2))
    (1.0, 1.0, 1.2)
    >>> analysis_spacing((0.57, 0.57, 3.3)) is None      # 2D clinical series: as it is
    True
    >>> analysis_spacing((1.0, 1.0, 1.0)) is None
    True
    """
    sp = tuple(float(s) for s in spacing_mm)
    if math.prod(sp) >= MIN_VOXEL_MM3:
        return None
    return tuple(max(s, ANALYSIS_MM) for s in sp)


def to_analysis_grid(img: sitk.Image) -> sitk.Image:
    """``img`` (float32) on its analysis grid; the same object when none applies.

    >>> a = sitk.Image([70, 60, 50], sitk.sitkFloat32) + 100.0
    >>> a.SetSpacing((0.7, 0.7, 0.7)); a.SetOrigin((10.0, -5.0, 3.0))
    >>> b = to_analysis_grid(a)
    >>> b.GetSize(), b.GetSpacing()
    ((49, 42, 35), (1.0, 1.0, 1.0))
    >>> [round(v, 2) for v in b.GetOrigin()]        # outer edges of the two grids meet
    [10.15, -4.85, 3.15]
    >>> round(float(sitk.GetArrayViewFromImage(b)[20, 20, 20]), 3)
    100.0
    """
    new = analysis_spacing(img.GetSpacing())
    if new is None:
        return img
    sp = img.GetSpacing()
    var = [max(n * n - s * s, 0.0) / _FWHM_PER_SIGMA ** 2 for n, s in zip(new, sp, strict=True)]
    smooth = sitk.DiscreteGaussian(sitk.Cast(img, sitk.sitkFloat32), variance=var,
                                   maximumKernelWidth=64, maximumError=0.01,
                                   useImageSpacing=True)
    size = [max(1, int(math.floor(n * s / a + 1e-6)))
            for n, s, a in zip(img.GetSize(), sp, new, strict=True)]
    first = [-0.5 + a / (2.0 * s) for s, a in zip(sp, new, strict=True)]
    origin = img.TransformContinuousIndexToPhysicalPoint(first)
    return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, origin, new,
                         img.GetDirection(), 0.0, sitk.sitkFloat32)
