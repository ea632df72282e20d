"""Brain volume, ventricle volume and spinal cord cross-sectional area (CSA).

These are **trend indicators for the safety report** (is anything growing or
shrinking between visits?), not validated volumetry.

Brain (:func:`brain_volumes`):

* brain volume (mm^3) = voxel count x voxel volume of the MNI-template-based
  brain mask (parenchyma plus ventricles, after N4), by the fit acceptance of
  change detection (:func:`mri_safety.preprocess.brainmask.brain_mask`): a
  template fit is used only when it is plausible, and one that scaled the
  template to the scalp is fitted again without it; for a volume a fit of more
  than :data:`~mri_safety.preprocess.brainmask.MAX_BRAIN_ML` (2 L) counts as
  scaled to the scalp too (change detection keeps such a fit: its registration
  mask needs the width on the position T1s). The template fit is an
  affine registration of a normal adult brain, so the mask follows the
  subject's outline only within a few mm (intensity refinement in a 3 mm
  band); thick-slice 2D series are partial-volume limited. Compare the same
  series type across visits, never T1w with FLAIR.
* ventricle volume (mm^3) (:func:`ventricle_mask`): CSF-intensity voxels inside
  the brain mask eroded by ``erode_mm`` (so sulcal and extra-axial CSF at the
  brain edge is excluded) and inside an ellipsoid centred on the brain mask's
  centroid with semi-axes ``centre_fraction`` x the brain's half-extent along
  each axis; of those, only connected components of at least ``min_mm3`` are
  kept. CSF intensity: below (T1w, FLAIR: CSF dark) or above (T2w: CSF bright)
  the midpoint between the median brain intensity and the CSF level, the 1st
  (dark) or 99th (bright) percentile inside the eroded brain. Limits: no
  tissue model, so periventricular lesions that are dark on T1w (or bright on
  T2w) are counted, enlarged sulci near the centre (atrophy) are counted, and
  the temporal horns outside the central ellipsoid are not.

Spine (:func:`cord_area`):

* cord mask from :func:`mri_safety.preprocess.spine.spine_masks` and vertebral
  levels from :func:`mri_safety.preprocess.spine.vertebral_levels` (PAM50
  matching; level identity is weak on short fields of view, see docs/spine.md).
* CSA per axial slice of the 1 mm isotropic LPS working grid
  (:func:`cord_csa_per_slice`): voxel count x in-plane pixel area x
  ``cos(angle)`` between the cord centreline (centroids, smoothed) and the
  slice normal (superior axis), i.e. the area of the cross-section
  perpendicular to the cord, as ``sct_process_segmentation`` reports it.
* CSA at C2-C3 = mean over the slices labelled C2 or C3 (PAM50 labels 2, 3);
  ``None`` with a reason when neither level is in the field of view.

Coordinate conventions: SimpleITK images carry LPS+ world mm; nibabel
images RAS+ world mm; arrays passed to the pure functions are in the array
order stated per function, with ``spacing_mm`` in the same axis order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

CSF = Literal["dark", "bright"]

#: BIDS contrast -> CSF appearance
CSF_BY_CONTRAST: dict[str, CSF] = {"T1w": "dark", "FLAIR": "dark", "T2w": "bright",
                                   "PD": "bright", "T2starw": "bright"}


def mask_volume_mm3(mask: NDArray[Any], spacing_mm: tuple[float, ...]) -> float:
    """Volume (mm^3) of the non-zero voxels of ``mask`` with voxel edges ``spacing_mm``."""
    return float(np.count_nonzero(mask) * float(np.prod(spacing_mm)))


def _ball(spacing_mm: tuple[float, ...], radius_mm: float) -> NDArray[np.bool_]:
    r = [max(0, int(np.floor(radius_mm / s))) for s in spacing_mm]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, spacing_mm, strict=True))
    return np.asarray(d2 <= radius_mm ** 2 + 1e-9)


def ventricle_mask(
    image: NDArray[np.floating], brain: NDArray[np.bool_], spacing_mm: tuple[float, float, float],
    csf: CSF = "dark", *, erode_mm: float = 4.0, centre_fraction: float = 0.5,
    min_mm3: float = 50.0,
) -> NDArray[np.bool_]:
    """Ventricle mask (bool, same array order as ``image``; see module docstring).

    ``brain``: brain mask (parenchyma + ventricles) on the same grid;
    ``spacing_mm``: voxel edges in array axis order. Raises ``ValueError`` when
    the brain mask is empty or the shapes differ.
    """
    img = np.asarray(image, dtype=np.float64)
    brain = np.asarray(brain, dtype=bool)
    if img.shape != brain.shape:
        raise ValueError(f"image {img.shape} and brain mask {brain.shape} differ in shape")
    if not brain.any():
        raise ValueError("brain mask is empty")
    core = ndi.binary_erosion(brain, _ball(spacing_mm, erode_mm))
    if core.sum() < 100:
        core = brain
    vals = img[core]
    med = float(np.median(vals))
    level = float(np.percentile(vals, 1.0 if csf == "dark" else 99.0))
    thr = 0.5 * (med + level)
    cand = core & ((img < thr) if csf == "dark" else (img > thr))
    idx = np.argwhere(brain)
    centre = idx.mean(axis=0)
    half = (idx.max(axis=0) - idx.min(axis=0) + 1) / 2.0 * centre_fraction
    grids = np.ogrid[tuple(slice(0, n) for n in img.shape)]
    ell = sum(((g - c) / max(h, 1.0)) ** 2 for g, c, h in zip(grids, centre, half, strict=True))
    cand &= np.asarray(ell <= 1.0)
    lab, n = ndi.label(cand)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = np.bincount(lab.ravel())[1:] * float(np.prod(spacing_mm))
    keep = np.concatenate([[False], sizes >= min_mm3])
    return np.asarray(keep[lab])


@dataclass(frozen=True)
class BrainVolumes:
    """Brain and ventricle volumes in mm^3 and how they were obtained."""

    brain_mm3: float
    ventricles_mm3: float
    csf: str
    method: str = ("MNI-template brain mask (N4, affine fit, 3 mm intensity band); ventricles "
                   "= CSF-intensity voxels in the 4 mm-eroded brain, central ellipsoid")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def brain_volumes(image: sitk.Image, contrast: str, analysis_grid: bool = True
                  ) -> BrainVolumes:
    """Brain and ventricle volume (mm^3) of a head image (SimpleITK, LPS+ mm).

    ``contrast``: BIDS suffix (T1w, FLAIR, T2w, ...) deciding whether CSF is
    dark or bright. Raises ``ValueError`` for an unsupported contrast or when
    no template fit is plausible (the morphological fallback mask that change
    detection would then search is no volume measurement). ``analysis_grid``:
    an image finer than 0.5 mm3 per voxel is measured on the 1 mm grid of change
    detection (:func:`mri_safety.preprocess.grid.to_analysis_grid`; coarser
    images as they are). The masks are 3-4 mm rules, and on the real 0.7 mm 3D
    T1 the native grid took 2.5 GB, more than a 2 GiB pipeline worker; the
    volumes it gives are in ``docs/report.md``.
    """
    from mri_safety.preprocess.bias import n4_correct
    from mri_safety.preprocess.brainmask import MAX_BRAIN_ML, brain_mask
    from mri_safety.preprocess.grid import to_analysis_grid

    if contrast not in CSF_BY_CONTRAST:
        raise ValueError(f"no ventricle rule for contrast {contrast!r}")
    if analysis_grid:
        image = to_analysis_grid(image)
    img, _ = n4_correct(sitk.Cast(image, sitk.sitkFloat32))
    masks = brain_mask(img, max_brain_ml=MAX_BRAIN_ML)
    if masks.subject_to_mni is None:
        raise ValueError(f"no plausible template fit for the brain volume ({masks.method})")
    arr = sitk.GetArrayFromImage(img)  # [k, j, i]
    brain = np.ascontiguousarray(masks.brain.transpose(2, 1, 0))  # [i, j, k] -> [k, j, i]
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    vent = ventricle_mask(arr, brain, spacing, CSF_BY_CONTRAST[contrast])  # type: ignore[arg-type]
    return BrainVolumes(brain_mm3=mask_volume_mm3(brain, spacing),
                        ventricles_mm3=mask_volume_mm3(vent, spacing),
                        csf=CSF_BY_CONTRAST[contrast],
                        method=f"{masks.method}; ventricles = CSF-intensity voxels in the "
                               "4 mm-eroded brain, central ellipsoid")


def cord_csa_per_slice(
    cord: NDArray[Any], spacing_mm: tuple[float, float, float], smooth_mm: float = 5.0
) -> NDArray[np.float64]:
    """Cord CSA (mm^2) per axial slice, perpendicular to the cord.

    ``cord``: mask with array axes ``[S, P, L]`` (SimpleITK LPS array order,
    axis 0 superior), ``spacing_mm`` in the same order. Returns one value per
    slice along axis 0, NaN where the slice has no cord voxel. The centreline
    is the per-slice centroid (mm), linearly filled and Gaussian-smoothed
    (``smooth_mm``) along S; the area is corrected by ``cos`` of its angle to S.
    """
    m = np.asarray(cord) > 0
    n = m.shape[0]
    counts = m.reshape(n, -1).sum(axis=1).astype(np.float64)
    area = counts * spacing_mm[1] * spacing_mm[2]
    has = counts > 0
    out = np.full(n, np.nan)
    if not has.any():
        return out
    z = np.arange(n)
    cen = np.zeros((n, 2))
    for k in np.nonzero(has)[0]:
        yx = np.argwhere(m[k])
        cen[k] = yx.mean(axis=0) * np.array(spacing_mm[1:])
    for d in range(2):
        cen[:, d] = np.interp(z, z[has], cen[has, d])
        if smooth_mm > 0:
            cen[:, d] = ndi.gaussian_filter1d(cen[:, d], smooth_mm / spacing_mm[0],
                                              mode="nearest")
    if has.sum() >= 2:
        dy = np.gradient(cen[:, 0], spacing_mm[0])
        dx = np.gradient(cen[:, 1], spacing_mm[0])
    else:
        dy = dx = np.zeros(n)
    cos = 1.0 / np.sqrt(1.0 + dy ** 2 + dx ** 2)
    out[has] = area[has] * cos[has]
    return out


@dataclass(frozen=True)
class CordArea:
    """Cord cross-sectional area at C2-C3 (mm^2; None when not in view) and context.

    ``per_slice``: CSA (mm^2) per slice of the 1 mm LPS working
    grid (index 0 = most inferior; None = no cord); ``slices_c2c3``: indices of the slices
    averaged."""

    csa_c2c3_mm2: float | None
    n_slices_c2c3: int
    csa_median_mm2: float | None
    levels: list[str]
    level_score: float
    level_runner_up: float
    reason: str = ""
    method: str = ("intensity cord mask, PAM50 vertebral levels, CSA perpendicular to the "
                   "centreline on a 1 mm grid, mean over slices labelled C2 or C3")
    per_slice: list[float | None] = field(default_factory=list)
    slices_c2c3: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cord_area(image: sitk.Image, contrast: Literal["t1", "t2"] = "t2") -> CordArea:
    """Cord CSA at C2-C3 of a spine image (SimpleITK, LPS+ mm, any orientation)."""
    from mri_safety.preprocess.spine import (
        LEVEL_NAMES,
        spine_masks,
        to_work_grid,
        vertebral_levels,
    )

    masks = spine_masks(image, contrast)
    lev = vertebral_levels(image, contrast, masks.cord)
    work = to_work_grid(image, 1.0)

    def on_work(m: sitk.Image) -> NDArray[Any]:
        return sitk.GetArrayFromImage(sitk.Resample(m, work, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    cord_w = on_work(masks.cord) > 0
    lab_w = on_work(lev.labels)
    spacing = tuple(float(s) for s in reversed(work.GetSpacing()))
    csa = cord_csa_per_slice(cord_w, spacing)  # type: ignore[arg-type]
    slice_level = np.array([np.bincount(lab_w[k][lab_w[k] > 0]).argmax()
                            if (lab_w[k] > 0).any() else 0 for k in range(lab_w.shape[0])])
    sel = np.isin(slice_level, (2, 3)) & np.isfinite(csa)
    present = sorted({int(v) for v in slice_level if v > 0})
    names = [LEVEL_NAMES.get(v, str(v)) for v in present]
    finite = csa[np.isfinite(csa)]
    return CordArea(
        csa_c2c3_mm2=float(csa[sel].mean()) if sel.any() else None,
        n_slices_c2c3=int(sel.sum()),
        csa_median_mm2=float(np.median(finite)) if finite.size else None,
        levels=names, level_score=float(lev.score), level_runner_up=float(lev.runner_up),
        reason="" if sel.any() else f"C2-C3 not in the field of view (levels found: "
                                    f"{', '.join(names) or 'none'})",
        per_slice=[round(float(v), 2) if np.isfinite(v) else None for v in csa],
        slices_c2c3=[int(k) for k in np.nonzero(sel)[0]],
    )
