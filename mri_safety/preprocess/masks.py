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
   restricted to the head foreground (:func:`_head_in`: BET's threshold, holes
   filled in every slice) and always containing the brain.
5. Neither mask reaches past the warped intracranial region down through the
   floor of the anterior cranial fossa and the sella (:func:`vault_reach`):
   millimetres below lie the ethmoid and sphenoid sinuses and the orbits,
   whose mucosa and contents change between visits and are not intracranial.
   Without this bound the band of step 3 (on T2w its intensity range, set by
   brain and ventricles, accepts sinus fluid) and the dilation of step 4 took
   in ethmoid mucosa, and a real T2w pair flagged three 286-402 mm3
   "extra-axial changes" there (MS patient03, 2026-12-07).

The template is a normal adult brain; on grossly abnormal anatomy the affine fit
is only approximate, and masks are meant for registration metrics and
intensity statistics, not volumetry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

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
    vault_reach_mm: how far (template mm) the masks may reach past the template's
        intracranial region where that is not down through the skull base
        (:func:`vault_reach`); larger than ``band_mm + icv_dilate_mm`` plus the
        fit's error, so that over the vault the bound never binds.
    """

    template_resolution: int = 2
    metric_dilate_mm: float = 8.0
    registration: RigidParams = field(default_factory=_template_reg_params)
    band_mm: float = 3.0
    p_lo: float = 2.0
    p_hi: float = 99.5
    margin: float = 0.1
    icv_dilate_mm: float = 3.0
    vault_reach_mm: float = 12.0


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
    The 1 mm package images are block-averaged to ``resolution`` mm (nilearn's own
    2 mm resampling is a spline resampling that took ~2 s per image).
    """
    from nilearn import datasets

    def load(img: nib.spatialimages.SpatialImage) -> sitk.Image:
        out = nib_to_sitk(img, np.float32)
        return sitk.BinShrink(out, [resolution] * 3) if resolution > 1 else out

    t1 = load(datasets.load_mni152_template(resolution=1))
    gm = load(datasets.load_mni152_gm_template(resolution=1))
    wm = load(datasets.load_mni152_wm_template(resolution=1))
    prob = sitk.Clamp(gm + wm, sitk.sitkFloat32, 0.0, 1.0)
    filled = sitk.BinaryFillhole(sitk.Cast(prob > 0.5, sitk.sitkUInt8))
    prob = sitk.Maximum(prob, sitk.Cast(filled, sitk.sitkFloat32))
    icv = sitk.Cast(t1 > 0.05, sitk.sitkUInt8)
    icv = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(icv, [2, 2, 2]))
    return t1, prob, icv


@lru_cache(maxsize=4)
def _metric_mask(resolution: int, dilate_mm: float) -> sitk.Image:
    t1, prob, _ = mni_template(resolution)
    return sitk.BinaryDilate(sitk.Cast(prob > 0.5, sitk.sitkUInt8), _radius(t1, dilate_mm))


#: a point outside the template's intracranial region is "below the skull base"
#: when the region's outward direction there is within 45 degrees of straight
#: down (its superior component <= -cos 45 of its length)
SKULL_BASE_COS = float(np.cos(np.pi / 4))
#: smoothing (mm) of the template's intracranial region whose gradient gives the
#: outward direction: the scale of the fossae, not of single gyri
NORMAL_SIGMA_MM = 6.0
#: the cut applies anterior to this coronal plane (MNI y, mm; the anterior
#: commissure is at about y = 0): the anterior cranial fossa and the sella
ANTERIOR_Y_MM = 0.0


@lru_cache(maxsize=4)
def vault_reach(resolution: int = 2, reach_mm: float = 12.0) -> sitk.Image:
    """Where on the template grid the masks may lie (UInt8): the template's
    intracranial region, and the points within ``reach_mm`` outside it except
    those below its anterior floor: anterior to MNI y = :data:`ANTERIOR_Y_MM`
    where the region's outward direction (the descent of the region smoothed
    by :data:`NORMAL_SIGMA_MM`) is within 45 degrees of straight down
    (:data:`SKULL_BASE_COS`).

    Over the vault the region beyond the template's intracranial boundary is
    the skull and scalp, and the reach allows for the affine fit's error and
    for a collection that widens the space under the skull. Under the
    anterior cranial fossa and the sella, a few millimetres down, are the
    ethmoid and sphenoid sinuses and the orbits, which the reach excludes.
    Under the middle and posterior fossae it does not: there the fit sat a few
    mm high on a real FLAIR (MS patient01), and cutting there too left 1.1 %
    of the expert brain mask out of the intracranial mask (0.28 % with the
    anterior cut alone; nothing before the cut), so the mastoids stay within
    reach. Directions are in template (MNI, world mm) coordinates; superior
    is +z in both RAS and LPS.

    >>> m = sitk.GetArrayViewFromImage(vault_reach(2))  # [z, y, x]
    >>> icv = sitk.GetArrayViewFromImage(mni_template(2)[2])
    >>> bool((m >= icv).all()) and int(m.sum()) > int(icv.sum())
    True
    """
    _, _, icv = mni_template(resolution)
    inside = sitk.GetArrayFromImage(icv) > 0  # [z, y, x]
    sp = np.asarray(icv.GetSpacing(), float)[::-1]
    dist = ndi.distance_transform_edt(~inside, sampling=sp)
    # outward direction: down the gradient of the region smoothed by NORMAL_SIGMA_MM
    # (the nearest boundary point instead follows every 2 mm bump of the gyri
    # recti and leaves islands under the fossa floor)
    smooth = ndi.gaussian_filter(inside.astype(np.float64), NORMAL_SIGMA_MM / sp)
    rot = np.asarray(icv.GetDirection(), float).reshape(3, 3)
    grad = np.stack(np.gradient(smooth, *sp))[::-1].reshape(3, -1)  # d/dx, d/dy, d/dz (index)
    out_dir = -(rot @ grad)  # physical (LPS)
    norm = np.linalg.norm(out_dir, axis=0)
    down = out_dir[2] <= -SKULL_BASE_COS * norm
    idx_mm = np.indices(inside.shape).reshape(3, -1)[::-1] * sp[::-1, None]  # x, y, z
    ras_y = -(icv.GetOrigin()[1] + (rot @ idx_mm)[1])  # LPS y -> RAS y
    down = (down & (ras_y >= ANTERIOR_Y_MM)).reshape(inside.shape)
    keep = inside | ((dist <= reach_mm) & ~down)
    out = sitk.GetImageFromArray(keep.astype(np.uint8))
    out.CopyInformation(icv)
    return out


def _radius(img: sitk.Image, mm: float) -> list[int]:
    return [max(1, int(round(mm / s))) for s in img.GetSpacing()]


def _work_region(img: sitk.Image, icv: sitk.Image, template_to_subject: sitk.Transform,
                 pad_mm: float) -> tuple[list[int], list[int]]:
    """Index box ``(start, size)`` of ``img`` covering the warped template region + ``pad_mm``.

    The corners of the template intracranial bounding box are mapped to the
    subject (an affine maps the box into the hull of its mapped corners).
    """
    lab = sitk.LabelShapeStatisticsImageFilter()
    lab.Execute(icv)
    bb = lab.GetBoundingBox(1)
    lo_t, hi_t = np.asarray(bb[:3], float) - 1, np.asarray(bb[:3], float) + bb[3:]
    idx = []
    for c in range(8):
        corner = [hi_t[d] if (c >> d) & 1 else lo_t[d] for d in range(3)]
        pt = template_to_subject.TransformPoint(icv.TransformContinuousIndexToPhysicalPoint(corner))
        idx.append(img.TransformPhysicalPointToContinuousIndex(pt))
    arr = np.asarray(idx)
    pad = np.ceil(pad_mm / np.asarray(img.GetSpacing())) + 2
    size = np.asarray(img.GetSize())
    lo = np.clip(np.floor(arr.min(0) - pad), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(arr.max(0) + pad), 0, size - 1).astype(int)
    return [int(v) for v in lo], [int(v) for v in hi - lo + 1]


def _largest_arr(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component of a boolean array (empty stays empty)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.asarray(lab == int(np.argmax(sizes)))


def _head_in(img: sitk.Image, crop: sitk.Image) -> np.ndarray:
    """Head foreground on ``crop`` as a boolean ``[k, j, i]`` array: above the
    head/background threshold of BET, ``t2 + 0.1 (t98 - t2)`` with ``t2``, ``t98`` the
    2nd and 98th intensity percentiles of the whole ``img`` (from a ~2 mm copy;
    Smith, Hum Brain Mapp 2002;17:143-155), largest component in the crop, holes
    filled in 3D and in every slice along each array axis.

    It bounds the intracranial mask (never into the air around the head). An
    Otsu threshold, used before 2026-12-06, splits brain from everything else on
    FLAIR and kept the intracranial mask within about 1 mm of the brain,
    so that a subdural collection lay outside the search region. The skull and
    the CSF under it are dark on T1w and FLAIR, so the foreground is a scalp ring
    around the brain with a dark gap; a 3D hole fill closes that gap only if the
    ring closes in 3D, which it does not where the field of view (or the crop)
    cuts the head; in a slice the ring is closed wherever it crosses the head.
    """
    f = [max(1, int(round(2.0 / s))) for s in img.GetSpacing()]
    small = sitk.GetArrayViewFromImage(sitk.Shrink(img, f))
    t2, t98 = np.percentile(small, [2, 98])
    m = _largest_arr(sitk.GetArrayViewFromImage(crop) > t2 + 0.1 * (t98 - t2))
    out = np.asarray(ndi.binary_fill_holes(m))
    for ax in range(3):
        sl = np.moveaxis(m, ax, 0)
        out |= np.moveaxis(np.stack([ndi.binary_fill_holes(x) for x in sl]), 0, ax)
    return out


def brain_masks(image: sitk.Image, params: MaskParams | None = None,
                fit_image: sitk.Image | None = None) -> BrainMasks:
    """Brain and intracranial masks of a (preferably bias-corrected) head image.

    Works for T1, T2 and FLAIR, 3D or thick-slice 2D, full or partial head
    coverage (only the covered part is masked). ``fit_image`` (same grid): the
    image the template is fitted to, when not ``image`` itself (e.g. with the
    scalp blanked: :func:`mri_safety.change.masks.brain_mask`); the masks are
    always refined on ``image``. Raises ``ValueError`` if the
    template cannot be fitted (empty warped mask). The post-processing runs on
    the subject box covering the warped template (+ the band and dilation
    widths), which gives the same masks as the full grid at ~1/4 of the cost.
    """
    p = params or MaskParams()
    full = sitk.Cast(image, sitk.sitkFloat32)
    t1, prob, icv = mni_template(p.template_resolution)
    metric_mask = _metric_mask(p.template_resolution, p.metric_dilate_mm)
    moving = full if fit_image is None else sitk.Cast(fit_image, sitk.sitkFloat32)
    res = register(t1, moving, metric_mask, None, p.registration)
    inv = res.transform.GetInverse()  # subject -> template points
    start, size = _work_region(full, icv, res.transform,
                               max(p.band_mm, p.icv_dilate_mm) + 2.0)
    img = sitk.RegionOfInterest(full, size, start)

    def warped(template_map: sitk.Image) -> sitk.Image:
        """A template map or mask on ``img``, linearly resampled, > 0.5 (UInt8)."""
        return sitk.Resample(sitk.Cast(template_map, sitk.sitkFloat32), img, inv,
                             sitk.sitkLinear, 0.0, sitk.sitkFloat32) > 0.5

    brain0 = warped(prob)
    icv0 = warped(icv)
    if sitk.GetArrayViewFromImage(brain0).sum() == 0:
        raise ValueError("template fit failed: warped brain mask is empty")
    allowed = sitk.GetArrayFromImage(
        warped(vault_reach(p.template_resolution, p.vault_reach_mm))) > 0

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
    brain_arr = core | (band & tissue & allowed)
    # opening / closing with the 6-neighbour cross and 6-connected hole filling in
    # scipy: same operations as ITK's radius-1 ball, ~5x cheaper here
    cross = ndi.generate_binary_structure(3, 1)
    brain_arr = _largest_arr(ndi.binary_opening(brain_arr, cross))
    brain_arr = ndi.binary_fill_holes(ndi.binary_closing(brain_arr, cross))
    brain = sitk.GetImageFromArray(brain_arr.astype(np.uint8))
    brain.CopyInformation(img)

    head = _head_in(full, img)
    dil = sitk.GetArrayFromImage(sitk.BinaryDilate(brain, _radius(img, p.icv_dilate_mm))) > 0
    icv1 = (sitk.GetArrayViewFromImage(icv0) > 0) | (dil & allowed)
    icv_arr = ndi.binary_fill_holes(_largest_arr((icv1 & head) | brain_arr))
    intracranial = sitk.GetImageFromArray(icv_arr.astype(np.uint8))
    intracranial.CopyInformation(img)
    return BrainMasks(brain=_paste(brain, full, start),
                      intracranial=_paste(intracranial, full, start),
                      template_to_subject=res.transform, registration=res)


def _paste(crop: sitk.Image, full: sitk.Image, start: list[int]) -> sitk.Image:
    """Put a UInt8 ``crop`` (taken at index ``start``) back into a zero image on ``full``'s grid."""
    out = np.zeros(full.GetSize()[::-1], np.uint8)
    c = sitk.GetArrayViewFromImage(crop)
    out[start[2]:start[2] + c.shape[0], start[1]:start[1] + c.shape[1],
        start[0]:start[0] + c.shape[2]] = c
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(full)
    return img
