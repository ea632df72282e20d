"""The brain and intracranial masks of a head image, as every later stage uses them.

:func:`brain_mask` chooses between the MNI template fits of
:func:`mri_safety.preprocess.masks.brain_masks` (accepted only when plausible:
inside the head, or under the skull and scalp; fitted a second time without the
scalp when the first fit is not) and a FALLBACK built from morphology: Otsu
head mask, strip ~6 mm of scalp, keep tissue brighter than half the inner
median, open by 3 mm to cut bridges to the scalp, keep the largest component,
dilate back and fill holes slice by slice along the thickest voxel axis
(ventricles and sulcal CSF are included: extra-axial collections must stay in
the search region). Change detection (:mod:`mri_safety.change.masks`) and the
brain volumes (:mod:`mri_safety.morphometry.volumes`) both use it, so a volume
and a search region never come from two different fits. Distances are world mm
(voxel spacing respected), arrays are ``[i, j, k]`` (NIfTI voxel order).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from mri_safety.distance import eroded_mm, within_mm
from mri_safety.preprocess.bias import head_mask
from mri_safety.register.transforms import subject_to_mni_ras


def arr(img: sitk.Image) -> NDArray[np.float32]:
    """SimpleITK image -> numpy ``[i, j, k]`` (NIfTI voxel order)."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def img_like(a: NDArray[np.generic], like: sitk.Image) -> sitk.Image:
    """numpy ``[i, j, k]`` -> SimpleITK image with the geometry of ``like``."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0)))
    out.CopyInformation(like)
    return out


def erode_mm(m: NDArray[np.bool_], r_mm: float, spacing: tuple[float, ...]) -> NDArray[np.bool_]:
    """Erosion by a ball of radius ``r_mm`` (world mm, anisotropic voxels respected)."""
    if r_mm <= 0:
        return m.copy()
    return eroded_mm(m, r_mm, spacing)


def dilate_mm(m: NDArray[np.bool_], r_mm: float, spacing: tuple[float, ...]) -> NDArray[np.bool_]:
    """Dilation by a ball of radius ``r_mm`` (world mm)."""
    if r_mm <= 0:
        return m.copy()
    return within_mm(m, r_mm, spacing)


def _largest(m: NDArray[np.bool_], keep_frac: float = 0.02) -> NDArray[np.bool_]:
    """Largest component plus any component >= ``keep_frac`` of it (e.g. temporal lobes
    cut off from the rest on thick low slices)."""
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= keep_frac * sizes.max())
    return np.asarray(np.isin(lab, keep[keep > 0]))


def fallback_brain_mask(image: sitk.Image, head: NDArray[np.bool_] | None = None
                        ) -> NDArray[np.bool_]:
    """FALLBACK brain mask (``[i, j, k]`` bool) by morphology; see module docstring.

    ``head``: the image's :func:`~mri_safety.preprocess.bias.head_mask` as an array,
    when the caller has it already (computed here otherwise)."""
    sp = tuple(float(s) for s in image.GetSpacing())
    a = arr(sitk.Cast(image, sitk.sitkFloat32))
    if head is None:
        head = arr(head_mask(image)) > 0
    head = _fill_slices(head, int(np.argmax(sp)))
    inner = erode_mm(head, 6.0, sp)
    if inner.sum() < 1000:
        inner = head
    thr = 0.5 * float(np.median(a[inner]))
    tissue = head & (a > thr)
    core = _largest(erode_mm(tissue & inner, 3.0, sp))
    brain = dilate_mm(core, 3.5, sp) & tissue
    brain = ndi.binary_closing(brain, iterations=2)
    return np.asarray(_fill_slices(brain, int(np.argmax(sp))) & head)


def _fill_slices(m: NDArray[np.bool_], ax: int) -> NDArray[np.bool_]:
    """Fill holes in each 2D slice across axis ``ax``."""
    filled = np.zeros_like(m)
    for k in range(m.shape[ax]):
        sl = [slice(None)] * 3
        sl[ax] = slice(k, k + 1)
        filled[tuple(sl)] = ndi.binary_fill_holes(m[tuple(sl)].squeeze(ax)).reshape(
            filled[tuple(sl)].shape)
    return filled


class MaskSet(NamedTuple):
    """Masks of one (baseline) image: ``brain`` (parenchyma + ventricles) and
    ``icv`` (intracranial) as numpy ``[i, j, k]`` on its grid, the ``method``
    that made them, and ``subject_to_mni``: the 4 x 4 matrix from the image's
    world RAS mm to MNI152 RAS mm given by the template fit (inverse of
    :attr:`mri_safety.preprocess.masks.BrainMasks.template_to_subject`), or None
    when the masks did not come from an accepted template fit."""

    brain: NDArray[np.bool_]
    icv: NDArray[np.bool_]
    method: str
    subject_to_mni: NDArray[np.float64] | None = None


def _closed_head(head_img: sitk.Image) -> NDArray[np.bool_]:
    """The head mask ``head_img`` closed by 6 mm and its holes filled, ``[i, j, k]``."""
    r = [max(1, int(round(6.0 / float(s)))) for s in head_img.GetSpacing()]
    closed = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(head_img, r),
                                 fullyConnected=False)
    return arr(closed) > 0


def _under_the_skull(brain: NDArray[np.bool_], head_img: sitk.Image) -> bool:
    """Second look at a template fit that failed the Otsu head-mask test.

    On a 3D T1 with bright fat the Otsu threshold can fall between grey and
    white matter, leaving the head mask full of holes (the real head
    ``brain-t1-3d``: 0.79 of a correct fit inside it). Against the head mask
    closed by 6 mm and filled, a brain must lie inside (>= 0.9) and, being under
    the skull and scalp, rarely within 4 mm of the head's surface (<= 0.2 of
    its voxels; the image border of a slab is not a surface). Measured 2026-12-05:
    correct fits (MS FLAIRs, position T1s, synthetic series, the 3D T1) 0.97-1.0
    inside and 0.00-0.13 near the surface; the over-scaled fits whose brain
    covers the scalp (MS T2W and T1W) 0.79-0.87 and 0.24-0.32, rejected by both
    tests. Only evaluated when the first test fails. ``head_img``: the image's
    :func:`~mri_safety.preprocess.bias.head_mask`."""
    sp = tuple(float(s) for s in head_img.GetSpacing())
    head = _closed_head(head_img)
    n = max(int(brain.sum()), 1)
    if float((brain & head).sum()) / n < 0.9:
        return False
    near_surface = within_mm(~head, 4.0, sp, inclusive=False)  # depth in the head < 4 mm
    return float((near_surface & brain).sum()) / n <= 0.2


#: largest plausible brain mask for a brain VOLUME (mL, parenchyma + ventricles):
#: adult brains are 1.0-1.7 L, the MNI template's 1.75 L; a larger fit has scaled
#: the template to the scalp (the 4.8 mm sagittal position T1s: 2.0-2.4 L)
MAX_BRAIN_ML = 2000.0

#: depth (mm) of the head's outer layer blanked for the second template fit: the
#: adult scalp and skull together are about 10-15 mm thick, the brain lies deeper
SCALP_MM = 10.0


def without_scalp(image: sitk.Image, head_img: sitk.Image, depth_mm: float = SCALP_MM
                  ) -> sitk.Image:
    """``image`` with every voxel less than ``depth_mm`` (world mm) inside the
    head set to 0; the head is ``head_img`` (Otsu foreground) closed by 6 mm and
    filled, as in :func:`_under_the_skull`. For the template fit only: with the
    bright scalp gone (fat on T1w and T2w), the fit cannot take the scalp's
    outline for the brain's."""
    sp = tuple(float(s) for s in head_img.GetSpacing())
    keep = eroded_mm(_closed_head(head_img), depth_mm, sp)
    return img_like(np.where(keep, arr(image), 0.0).astype(np.float32), image)


def brain_mask(image: sitk.Image, max_brain_ml: float | None = None) -> MaskSet:
    """Brain and intracranial masks ``[i, j, k]`` of a (bias-corrected) head image.

    Prefers :func:`mri_safety.preprocess.masks.brain_masks` (MNI template fit).
    A fit is accepted when its brain mask is at least 80 % inside the head mask
    or passes :func:`_under_the_skull`, and, with ``max_brain_ml`` (mL; the
    brain volumes pass :data:`MAX_BRAIN_ML`), holds no more than that. Change
    detection passes none: its registration mask (the brain grown by 5 mm)
    needs the wider mask of a fit scaled to the scalp on the 4.8 mm position
    T1s, where the head moved up to 64 mm and 14 degrees between the scans
    (with the bounded mask HFP-HFDL failed to register, Mattes MI -0.08
    against -0.92, and T1-dark spheres put into the six pairs were found 9 of
    18 against 16; measured 2026-12-07). When the fit to the image is not, it is
    tried once more on the image without its outer :data:`SCALP_MM`
    (:func:`without_scalp`; the masks are still made on the image): the
    thick-slice T1W and T2W of the MS pairs, whose first fits scale the
    template to the scalp, are accepted that way. If neither is accepted, or
    the module is missing or fails, the morphological FALLBACK is used and the
    intracranial mask is the brain dilated by 3 mm within the head.
    """
    head_img = head_mask(image)
    head = arr(head_img) > 0
    template: tuple[NDArray[np.bool_], NDArray[np.bool_]] | None = None
    try:  # preferred: the preprocessing stage's MNI-based masks
        import dataclasses

        from mri_safety.preprocess.masks import MaskParams, brain_masks

        # one thread: the multithreaded Mattes metric is not bit-reproducible, and
        # candidates.json must be identical on two runs
        mp = MaskParams()
        mp = dataclasses.replace(mp, registration=dataclasses.replace(mp.registration, threads=1))
        for fit, how in ((None, ""), (without_scalp, ", fitted without the scalp")):
            bm = brain_masks(image, mp, None if fit is None else fit(image, head_img))
            brain = arr(bm.brain) > 0
            icv = arr(bm.intracranial) > 0
            # a template fit that went astray covers air: the brain must lie in the head
            # (real heads: 0.90-0.98 inside the Otsu head mask, which misses some dark
            # CSF and slab-edge brain; a failed fit on a phantom: <= 0.6)
            inside = float((brain & head).sum()) / max(int(brain.sum()), 1)
            ml = float(brain.sum()) * float(np.prod(image.GetSpacing())) / 1000.0
            if (brain.sum() >= 1000 and (max_brain_ml is None or ml <= max_brain_ml)
                    and (inside >= 0.8 or _under_the_skull(brain, head_img))):
                return MaskSet(brain, icv | brain,
                               f"preprocess.masks.brain_masks (MNI template{how})",
                               subject_to_mni_ras(bm.template_to_subject))
            if brain.sum() >= 1000 and template is None:
                template = brain, icv | brain
    except ImportError:
        pass
    except (ValueError, RuntimeError):  # a failing optional stage must not stop detection
        pass
    sp = tuple(float(s) for s in image.GetSpacing())
    brain = fallback_brain_mask(image, head)
    if brain.sum() < 1000 and template is not None:
        # no brain-like object (e.g. a sagittal spine crop): keep the template's
        # region rather than nothing; a cord/canal search region is open work
        return MaskSet(template[0], template[1],
                       "preprocess.masks.brain_masks (MNI template, implausible)")
    return MaskSet(brain, (dilate_mm(brain, 3.0, sp) & head) | brain, "fallback_morphology")
