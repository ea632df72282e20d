"""Cervical spine subject from the real ``spine/t2`` crop (manual cord segmentation).

The real T2w image is the subject-space image (world RAS+ mm of the crop);
a cord lesion takes its shape statistics and contrast from
``spine/t2/t2_fake_lesion*`` (a separate image: only the lesion/cord intensity
ratio and size are used). Neck flexion is a smooth non-rigid backward warp:
rotation about the left-right axis whose angle ramps smoothly along S-I.

The companion sagittal T1w (:func:`load_spine_t1`) is the real ``spine/t1``
image of the same subject and session, registered rigidly to the T2 crop and
resampled onto the T2 crop's voxel grid, so the T2 cord mask, levels, lesion
and syrinx fraction maps (and therefore the spine ground truth) describe it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from mri_safety.register.transforms import sitk_to_ras_matrix
from mri_safety.synth.anatomy import DATA_ROOT
from mri_safety.synth.sitkutil import array_to_sitk, mattes_register

SPINE_T2 = DATA_ROOT / "spine" / "t2"
SPINE_T1 = DATA_ROOT / "spine" / "t1"
#: T1w intensity of an intramedullary cord lesion relative to the cord. The data
#: have no T1w lesion (``t2_fake_lesion`` is T2 only). Demyelinating / inflammatory
#: cord lesions that are bright on T2w are usually isointense on T1w (chronic
#: "black holes" are a brain finding, rare in the cord), so the lesion is invisible
#: on the T1w: only its T2w appearance and the T1w's role as a no-change control.
T1_LESION_RATIO = 1.0


@dataclass
class Spine:
    """Spine subject: ``image`` (float32, cord ~ 1), ``cord`` mask, ``levels``
    (vertebral level label per cord voxel), ``affine`` voxel -> RAS mm."""

    image: np.ndarray
    cord: np.ndarray
    levels: np.ndarray
    affine: np.ndarray
    lesion_ratio: float  # lesion / cord intensity on T2w (from t2_fake_lesion)
    csf_value: float


def _load(p: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(p))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine  # type: ignore[attr-defined]


def load_spine(root: Path = SPINE_T2) -> Spine:
    """Read the real cervical T2 crop, cord mask and levels; derive lesion contrast."""
    img, aff = _load(root / "t2.nii.gz")
    cord, _ = _load(root / "t2_seg-manual.nii.gz")
    lev, _ = _load(root / "t2_seg-manual_labeled.nii.gz")
    fl, _ = _load(root / "t2_fake_lesion.nii.gz")
    fl_les, _ = _load(root / "t2_fake_lesion_lesion_seg.nii.gz")
    fl_cord, _ = _load(root / "t2_fake_lesion_sc_seg.nii.gz")
    les_core = ndi.binary_erosion(fl_les > 0.5)
    if not les_core.any():
        les_core = fl_les > 0.5
    healthy = (fl_cord > 0.5) & ~ndi.binary_dilation(fl_les > 0.5, iterations=2)
    ratio = float(np.median(fl[les_core]) / np.median(fl[healthy]))
    cmask = cord > 0.5
    scale = float(np.median(img[cmask]))
    ring = ndi.binary_dilation(cmask, iterations=3) & ~ndi.binary_dilation(cmask, iterations=1)
    csf = float(np.percentile(img[ring], 90) / scale)
    return Spine(img / scale, cmask, lev.astype(np.int16), aff, ratio, csf)


@dataclass
class SpineT1:
    """The real T1w on the :class:`Spine` voxel grid (cord median = 1) and how it got there.

    ``t2_to_t1`` maps T2-crop world RAS mm to T1 world RAS mm (rigid registration);
    ``outside`` marks T2-crop voxels whose T1 source point is outside the T1 box
    (filled with the nearest T1 voxel); ``cord_median`` / ``ring_median`` are the
    medians of the resampled T1 (before normalisation) inside the T2 cord mask and
    in the ring 2-3 voxels around it.
    """

    image: np.ndarray
    csf_value: float  # CSF / cord on T1w (syrinx value)
    lesion_ratio: float  # cord lesion / cord on T1w
    t2_to_t1: np.ndarray
    outside: np.ndarray
    cord_median: float
    ring_median: float


def _register_t1_to_t2(t2: np.ndarray, t2_aff: np.ndarray, cord: np.ndarray, t1: np.ndarray,
                       t1_aff: np.ndarray) -> np.ndarray:
    """Rigid T2-crop -> T1 world mapping (4x4 RAS) by Mattes MI around the cord.

    Seeded sampling, one ITK thread (:func:`mattes_register`): the same result every
    run and on every machine. On errsm_30 it
    finds a ~1.4 mm left-right shift and <= 0.6 deg of rotation (the manual cord
    segmentations of both images agree: centroids 1.2-1.4 mm apart in x).
    """
    fixed = sitk.Cast(array_to_sitk(t2, t2_aff), sitk.sitkFloat32)
    moving = sitk.Cast(array_to_sitk(t1, t1_aff), sitk.sitkFloat32)
    mask = sitk.Cast(array_to_sitk(ndi.binary_dilation(cord, iterations=8).astype(np.uint8),
                                   t2_aff), sitk.sitkUInt8)
    # ITK maps fixed (T2) LPS points to moving (T1) LPS points
    return sitk_to_ras_matrix(mattes_register(fixed, moving, mask, sitk.Euler3DTransform(),
                                              sampling=0.5, min_step=1e-3, iterations=200,
                                              sigmas=(1.0, 0.0)))


def load_spine_t1(sp: Spine, root: Path = SPINE_T1, root_t2: Path = SPINE_T2) -> SpineT1:
    """Real T1w of the same subject on ``sp``'s grid, normalised by its cord median.

    The T1 (1 mm, RAS) and T2 (1 mm, PSR) crops come from one session; the T1 is
    rigidly registered to the T2 and resampled (linear) onto the T2 crop's grid.
    The T1 box is narrower: T2-crop voxels right of x ~ 10 mm (about 19 % of the
    crop, all lateral to the cord; none of the cord) take the nearest T1 voxel
    (``mode="nearest"``), i.e. the T1's rightmost sagittal plane is repeated.
    """
    t1, t1_aff = _load(root / "t1w.nii.gz")
    t2, t2_aff = _load(root_t2 / "t2.nii.gz")
    m = _register_t1_to_t2(t2, t2_aff, sp.cord, t1, t1_aff)
    idx = np.indices(sp.image.shape, dtype=np.float64).reshape(3, -1)
    vox = np.linalg.inv(t1_aff) @ m @ sp.affine
    v = vox[:3, :3] @ idx + vox[:3, 3:4]
    outside = ((v < -0.5) | (v > np.array(t1.shape)[:, None] - 0.5)).any(0)
    res = ndi.map_coordinates(t1, v, order=1, mode="nearest").reshape(sp.image.shape)
    res = res.astype(np.float32)
    cmask = sp.cord
    ring = ndi.binary_dilation(cmask, iterations=3) & ~ndi.binary_dilation(cmask, iterations=1)
    scale = float(np.median(res[cmask]))
    # CSF on T1w: ring voxels that are CSF on the T2w (at or above the ring's T2 75th
    # percentile, i.e. bright fluid, not cord partial volume or dura/bone)
    csf = ring & (sp.image >= np.percentile(sp.image[ring], 75))
    return SpineT1(res / scale, float(np.median(res[csf]) / scale), T1_LESION_RATIO, m,
                   outside.reshape(sp.image.shape), scale, float(np.median(res[ring])))


def flexion_warp(arr: np.ndarray, affine: np.ndarray, angle_deg: float,
                 order: int = 1) -> np.ndarray:
    """Smooth non-rigid neck flexion (+) / extension (-) applied by backward warping.

    The rotation angle about the LR axis through the crop centre ramps from 0
    (inferior end) to ``angle_deg`` (superior end) with a smooth cosine profile.
    """
    shape = arr.shape
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    w = affine[:3, :3] @ idx + affine[:3, 3:4]
    c = w.mean(1, keepdims=True)
    z = w[2] - c[2, 0]
    zr = (z - z.min()) / max(np.ptp(z), 1e-6)
    ang = np.deg2rad(angle_deg) * 0.5 * (1 - np.cos(np.pi * zr))
    d = w - c
    # inverse rotation about x (LR axis) by the local angle
    y = np.cos(ang) * d[1] + np.sin(ang) * d[2]
    zz = -np.sin(ang) * d[1] + np.cos(ang) * d[2]
    src = np.stack([d[0], y, zz]) + c
    inv = np.linalg.inv(affine)
    v = inv[:3, :3] @ src + inv[:3, 3:4]
    return ndi.map_coordinates(arr, v, order=order, mode="nearest").reshape(shape).astype(
        arr.dtype if order == 0 else np.float32)


def cord_blob(sp: Spine, level_rank: float, length_mm: float, width_frac: float, seed: int,
              central: bool = False) -> np.ndarray:
    """Fraction map of an intramedullary lesion (or, ``central``, a syrinx) in the cord.

    ``level_rank`` in [0, 1] selects the position along the cord (inferior ->
    superior). The lesion is an ellipsoid elongated along S-I, clipped to the
    cord, with a one-voxel partial-volume edge.
    """
    rng = np.random.default_rng(seed)
    cz = np.argwhere(sp.cord)
    world = (sp.affine[:3, :3] @ cz.T).T + sp.affine[:3, 3]
    si = world[:, 2]
    target = np.quantile(si, 0.15 + 0.7 * level_rank)
    near = np.abs(si - target) < 1.0
    centre = world[near].mean(0)
    idx = np.indices(sp.image.shape, dtype=np.float64).reshape(3, -1)
    w = (sp.affine[:3, :3] @ idx + sp.affine[:3, 3:4]).reshape(3, *sp.image.shape)
    d = w - centre.reshape(3, 1, 1, 1)
    if not central:
        d[0] -= rng.uniform(-1.0, 1.0)
        d[1] -= rng.uniform(-1.0, 1.0)
    rx = ry = max(1.0, 3.5 * width_frac)
    rz = length_mm / 2
    dist = np.sqrt((d[0] / rx) ** 2 + (d[1] / ry) ** 2 + (d[2] / rz) ** 2)
    vox = float(np.abs(sp.affine[0, 0]) or 1.0)
    frac = np.clip(0.5 + (1 - dist) * min(rx, ry) / vox, 0, 1)
    cord_soft = ndi.gaussian_filter(sp.cord.astype(np.float32), 0.5)
    return (frac * np.clip(cord_soft * 1.2, 0, 1)).astype(np.float32)
