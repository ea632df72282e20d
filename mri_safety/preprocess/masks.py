"""Brain and intracranial masks from the MNI ICBM152 2009a template (no downloaded weights).

Images are SimpleITK images (LPS+ geometry, world mm). Method:

1. The nilearn package-data MNI152 2009a T1 template (skull-stripped, 2 mm) is
   the *fixed* image, with a metric mask = template brain dilated by
   ``metric_dilate_mm`` (so the brain edge and the CSF/skull around it drive
   the fit); the bias-corrected subject is the *moving* image. Affine (12 dof)
   registration with :func:`mri_safety.register.rigid.register` (Mattes MI,
   random sampling with a fixed seed, 8 mm and 4 mm levels).
2. The template's GM+WM probability (holes filled: parenchyma plus ventricles)
   and its intracranial region (the template's non-zero, skull-stripped region,
   closed, which includes the sulcal and extra-axial CSF) are resampled onto the
   subject grid through the inverse affine (linear interpolation, threshold 0.5).
3. Intensity refinement of the brain mask in a band of ``band_mm`` around its
   edge: keep band voxels whose intensity lies inside the robust range of the
   eroded core brain (``[p_lo, p_hi]`` percentiles, widened by ``margin``), which
   removes CSF (dark in T1/FLAIR, bright in T2) and fat/marrow; then the largest
   component, holes filled.
4. The intracranial mask is the union of the warped intracranial region and the
   brain dilated by ``icv_dilate_mm`` (covers extra-axial collections:
   subdural/epidural space),
   restricted to the head foreground (Otsu) and always containing the brain.

The template is a normal adult brain; on grossly abnormal anatomy the affine fit
is only approximate, and masks are meant for registration metrics and
intensity statistics, not volumetry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from mri_safety.preprocess.bias import head_mask
from mri_safety.register.rigid import RegistrationResult, RigidParams, register
from mri_safety.register.transforms import nib_to_sitk


def _template_reg_params() -> RigidParams:
    return RigidParams(
        transform="affine", level_spacing_mm=(8.0, 4.0), smoothing_mm=(4.0, 2.0),
        sampling_fraction=(1.0, 0.5), step_mm=(4.0, 2.0), min_step_mm=(0.05, 0.01),
        iterations=200, init="auto", crop_margin_mm=0.0)


@dataclass(frozen=True)
class MaskParams:
    """Parameters of :func:`brain_masks` (lengths in world mm).

    template_resolution: nilearn MNI152 template resolution, 1 or 2 mm.
    metric_dilate_mm: dilation of the template brain used as the metric mask.
    registration: template -> subject registration parameters (affine).
    band_mm: width of the band around the warped brain edge refined by intensity.
    p_lo, p_hi: percentiles of the core-brain intensities bounding brain tissue.
    margin: relative widening of ``[p_lo, p_hi]`` (fraction of the range).
    icv_dilate_mm: dilation of the brain added to the intracranial mask (extra-axial space).
    """

    template_resolution: int = 2
    metric_dilate_mm: float = 8.0
    registration: RigidParams = field(default_factory=_template_reg_params)
    band_mm: float = 3.0
    p_lo: float = 2.0
    p_hi: float = 99.5
    margin: float = 0.1
    icv_dilate_mm: float = 3.0


@dataclass
class BrainMasks:
    """Masks on the subject grid (UInt8, 1 inside) and the template fit.

    brain: brain parenchyma plus ventricles.
    intracranial: brain plus CSF spaces and extra-axial space inside the skull.
    template_to_subject: affine mapping template points (LPS mm) to subject points.
    registration: the registration result (metric value, timing).
    """

    brain: sitk.Image
    intracranial: sitk.Image
    template_to_subject: sitk.Transform
    registration: RegistrationResult


@lru_cache(maxsize=2)
def mni_template(resolution: int = 2) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """Return ``(t1, brain_prob, intracranial)`` of the MNI152 2009a template (nilearn data).

    ``brain_prob`` is GM+WM probability with interior holes (ventricles) set to 1;
    ``intracranial`` is the template's skull-stripped non-zero region, closed (UInt8).
    """
    from nilearn import datasets

    t1 = nib_to_sitk(datasets.load_mni152_template(resolution=resolution), np.float32)
    gm = nib_to_sitk(datasets.load_mni152_gm_template(resolution=resolution), np.float32)
    wm = nib_to_sitk(datasets.load_mni152_wm_template(resolution=resolution), np.float32)
    prob = sitk.Clamp(gm + wm, sitk.sitkFloat32, 0.0, 1.0)
    filled = sitk.BinaryFillhole(sitk.Cast(prob > 0.5, sitk.sitkUInt8))
    prob = sitk.Maximum(prob, sitk.Cast(filled, sitk.sitkFloat32))
    icv = sitk.Cast(t1 > 0.05, sitk.sitkUInt8)
    icv = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(icv, [2, 2, 2]))
    return t1, prob, icv


def _radius(img: sitk.Image, mm: float) -> list[int]:
    return [max(1, int(round(mm / s))) for s in img.GetSpacing()]


def _largest(mask: sitk.Image) -> sitk.Image:
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(cc == 1, sitk.sitkUInt8)


def brain_masks(image: sitk.Image, params: MaskParams | None = None) -> BrainMasks:
    """Brain and intracranial masks of a (preferably bias-corrected) head image.

    Works for T1, T2 and FLAIR, 3D or thick-slice 2D, full or partial head
    coverage (only the covered part is masked). Raises ``ValueError`` if the
    template cannot be fitted (empty warped mask).
    """
    p = params or MaskParams()
    img = sitk.Cast(image, sitk.sitkFloat32)
    t1, prob, icv = mni_template(p.template_resolution)
    metric_mask = sitk.BinaryDilate(sitk.Cast(prob > 0.5, sitk.sitkUInt8),
                                    _radius(t1, p.metric_dilate_mm))
    res = register(t1, img, metric_mask, None, p.registration)
    inv = res.transform.GetInverse()  # subject -> template points
    bprob = sitk.Resample(prob, img, inv, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    brain0 = sitk.Cast(bprob > 0.5, sitk.sitkUInt8)
    icv_w = sitk.Resample(sitk.Cast(icv, sitk.sitkFloat32), img, inv, sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    icv0 = sitk.Cast(icv_w > 0.5, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(brain0).sum() == 0:
        raise ValueError("template fit failed: warped brain mask is empty")

    # intensity refinement in a band around the warped brain edge
    arr = sitk.GetArrayFromImage(img)
    core = sitk.GetArrayFromImage(sitk.BinaryErode(brain0, _radius(img, p.band_mm))) > 0
    if core.sum() < 100:
        core = sitk.GetArrayFromImage(brain0) > 0
    lo, hi = np.percentile(arr[core], [p.p_lo, p.p_hi])
    lo, hi = lo - p.margin * (hi - lo), hi + p.margin * (hi - lo)
    outer = sitk.GetArrayFromImage(sitk.BinaryDilate(brain0, _radius(img, p.band_mm))) > 0
    band = outer & ~core
    tissue = (arr >= lo) & (arr <= hi)
    brain_arr = core | (band & tissue)
    brain = sitk.GetImageFromArray(brain_arr.astype(np.uint8))
    brain.CopyInformation(img)
    brain = sitk.BinaryMorphologicalOpening(brain, [1, 1, 1])
    brain = _largest(brain)
    brain = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(brain, [1, 1, 1]))

    head = head_mask(img)
    icv1 = sitk.Or(icv0, sitk.BinaryDilate(brain, _radius(img, p.icv_dilate_mm)))
    intracranial = sitk.Or(sitk.And(icv1, head), brain)
    intracranial = sitk.BinaryFillhole(_largest(intracranial))
    return BrainMasks(brain=sitk.Cast(brain, sitk.sitkUInt8),
                      intracranial=sitk.Cast(intracranial, sitk.sitkUInt8),
                      template_to_subject=res.transform, registration=res)
