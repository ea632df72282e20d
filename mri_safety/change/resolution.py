"""Matching the slice profiles of two acquisitions before subtraction.

When the visits differ in slice thickness (e.g. 4 mm -> 3 mm 2D FLAIR), in-plane
resolution or 2D/3D, the sharper image is degraded to the coarser profile
along each baseline voxel axis, so a partial-volume difference is not read as
change. A voxel is modelled as a box; the extra blur needed to turn a box of
width ``w`` into one of width ``t`` has the SD ``sqrt((t**2 - w**2) / 12)``
(variances of uniform profiles add). Geometry in world mm; directions are the
SimpleITK (LPS) direction cosines of each image.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from mri_safety.register.transforms import affine_matrix


def _dirs(img: sitk.Image) -> NDArray[np.float64]:
    return np.asarray(img.GetDirection(), np.float64).reshape(3, 3)


def profile_in_axes(img: sitk.Image, axes: NDArray[np.float64],
                    rot: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Width (mm) of ``img``'s voxel box projected on each unit vector column of ``axes``.

    ``rot`` maps directions of ``img``'s space into the space of ``axes``
    (identity when None).
    """
    d = _dirs(img) * np.asarray(img.GetSpacing(), np.float64)  # columns = voxel edge vectors
    if rot is not None:
        d = rot @ d
    return np.abs(axes.T @ d).sum(axis=1)


def match_profiles(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform
                   ) -> tuple[sitk.Image, sitk.Image, dict[str, object]]:
    """Degrade the sharper of ``fixed``/``moving`` along each fixed axis to the coarser profile.

    ``transform`` maps fixed points to moving points (ITK). Returns
    ``(fixed_degraded, moving_degraded, info)``; both stay on their own grids.
    ``info`` holds the effective resolution (mm per baseline axis) and which
    image was degraded along which axis, for the output's record of reduced
    sensitivity.
    """
    a, _ = affine_matrix(transform)  # fixed -> moving (LPS)
    u, _, vt = np.linalg.svd(a)
    rot_mf = (u @ vt).T  # moving directions -> fixed directions (rotation part)
    fax = _dirs(fixed)
    w_f = np.asarray(fixed.GetSpacing(), np.float64)
    w_m = profile_in_axes(moving, fax, rot_mf)
    target = np.maximum(w_f, w_m)
    sig_f = np.sqrt(np.maximum(0.0, target ** 2 - w_f ** 2) / 12.0)
    # the moving image is blurred along its own axes: assign each fixed axis to the
    # moving axis most parallel to it
    max_dirs = rot_mf @ _dirs(moving)
    sig_m = np.zeros(3)
    w_m_own = np.asarray(moving.GetSpacing(), np.float64)
    for i in range(3):
        j = int(np.argmax(np.abs(fax[:, i] @ max_dirs)))
        sig_m[j] = max(sig_m[j], float(np.sqrt(max(0.0, target[i] ** 2 - w_m_own[j] ** 2) / 12.0)))
    f_out = _blur(fixed, sig_f)
    m_out = _blur(moving, sig_m)
    info: dict[str, object] = {
        "baseline_voxel_mm": [round(float(v), 3) for v in w_f],
        "followup_voxel_in_baseline_axes_mm": [round(float(v), 3) for v in w_m],
        "effective_resolution_mm": [round(float(v), 3) for v in target],
        "baseline_blur_sd_mm": [round(float(v), 3) for v in sig_f],
        "followup_blur_sd_mm": [round(float(v), 3) for v in sig_m],
        "degraded": sorted({*(["baseline"] if sig_f.max() > 0.05 else []),
                            *(["followup"] if sig_m.max() > 0.05 else [])}),
        # a lesion smaller than the coarsest slice profile is partial-volumed in
        # at least one visit: its contrast (and so its z) drops roughly by d / t
        "min_reliable_diameter_mm": round(float(target.max()), 2),
    }
    return f_out, m_out, info


def _blur(img: sitk.Image, sigma_mm: NDArray[np.float64]) -> sitk.Image:
    """Gaussian blur with per-axis SD in mm (axes with SD < 5 % of a voxel are left alone)."""
    sp = np.asarray(img.GetSpacing(), np.float64)
    if np.all(sigma_mm < 0.05 * sp):
        return sitk.Cast(img, sitk.sitkFloat32)
    from scipy import ndimage as ndi

    a = sitk.GetArrayFromImage(sitk.Cast(img, sitk.sitkFloat32))  # [k, j, i]
    s_vox = (sigma_mm / sp)[::-1]
    out = sitk.GetImageFromArray(ndi.gaussian_filter(a, s_vox, mode="nearest").astype(np.float32))
    out.CopyInformation(img)
    return out
