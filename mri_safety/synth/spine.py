"""Cervical spine subject from the real ``spine/t2`` crop (manual cord segmentation).

The real T2w image is the subject-space image (world RAS+ mm of the crop);
a cord lesion takes its shape statistics and contrast from
``spine/t2/t2_fake_lesion*`` (a separate image: only the lesion/cord intensity
ratio and size are used). Neck flexion is a smooth non-rigid backward warp:
rotation about the left-right axis whose angle ramps smoothly along S-I.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from mri_safety.synth.anatomy import DATA_ROOT

SPINE_T2 = DATA_ROOT / "spine" / "t2"


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
