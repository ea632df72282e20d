"""Plain subtraction baseline (VisTarsier-like): the floor every method must beat.

Rigid registration (SimpleITK Euler3D, Mattes MI, regular-step gradient
descent, 3 levels, seeded regular sampling), optional N4 on shrunk images,
Otsu head mask, mean/SD matching inside the mask, follow-up minus baseline,
robust z (median / 1.4826 MAD inside the mask); candidates are 26-connected
components of z > ``z_thr`` with >= ``min_voxels`` voxels, scored by max z.
All outputs are on the fixed (baseline) grid, arrays indexed (i, j, k).
Registration and N4 run on one ITK thread: ITK splits their sums into chunks
that threads take as they come, so with 2 threads two runs of the same pair
differed (z up to 1e-3, 72 or 73 candidates on a real no-change pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from mri_safety.evaluation.pairs import Pair
from mri_safety.threads import itk_threads


@dataclass
class SubtractionResult:
    """``z``: robust z map; ``candidates``: label map; ``scores``: max z per label (1..n);
    ``mask``: analysis mask; ``diff_spread``: robust SD of the matched difference
    divided by the median fixed intensity inside the mask (realism statistic)."""

    z: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    diff_spread: float
    transform: sitk.Transform


def rigid_register(fixed: sitk.Image, moving: sitk.Image, seed: int = 1) -> sitk.Transform:
    """Rigid fixed <- moving (maps fixed points to moving points)."""
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(0.1, seed=seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-4, 200, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=False)
    reg.SetNumberOfThreads(1)
    with itk_threads(1):
        return reg.Execute(fixed, moving)


def _n4(img: sitk.Image, mask: sitk.Image) -> sitk.Image:
    shrink = [4] * img.GetDimension()
    small = sitk.Shrink(img, shrink)
    smask = sitk.Shrink(mask, shrink)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations([20, 20, 20])
    with itk_threads(1):
        f.Execute(small, smask)
    log_bias = f.GetLogBiasFieldAsImage(img)
    return sitk.Cast(img / sitk.Exp(log_bias), sitk.sitkFloat32)


def _arr(img: sitk.Image) -> np.ndarray:
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def subtraction(pair: Pair, z_thr: float = 5.0, min_voxels: int = 10, n4: bool = True,
                use_true_transform: bool = False, seed: int = 1) -> SubtractionResult:
    """Run the plain subtraction baseline on a pair."""
    fixed = sitk.Cast(pair.fixed, sitk.sitkFloat32)
    moving = sitk.Cast(pair.moving, sitk.sitkFloat32)
    if pair.moving_prealigned:
        tx: sitk.Transform = sitk.Transform()
    elif use_true_transform and pair.true_transform is not None:
        tx = pair.true_transform
    else:
        tx = rigid_register(fixed, moving, seed)
    moved = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # valid region: where the follow-up covers the fixed grid
    cover = sitk.Resample(sitk.Cast(moving * 0 + 1, sitk.sitkFloat32), fixed, tx,
                          sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    if pair.mask is not None:
        mask_img = sitk.Cast(pair.mask > 0, sitk.sitkUInt8)
    else:
        mask_img = sitk.OtsuThreshold(sitk.SmoothingRecursiveGaussian(fixed, 2.0), 0, 1)
    if n4:
        fixed = _n4(fixed, mask_img)
        moved = _n4(moved, mask_img)
    f, m = _arr(fixed), _arr(moved)
    mask = (_arr(mask_img) > 0) & (_arr(cover) > 0.5) & (m > 0)
    mask = ndi.binary_erosion(mask, iterations=1)
    if mask.sum() < 100:
        raise ValueError(f"{pair.name}: analysis mask nearly empty after registration")
    fz = (f - f[mask].mean()) / f[mask].std()
    mz = (m - m[mask].mean()) / m[mask].std()
    d = (mz - fz) * mask
    med = float(np.median(d[mask]))
    mad = float(np.median(np.abs(d[mask] - med))) * 1.4826
    z = np.where(mask, (d - med) / max(mad, 1e-6), 0.0).astype(np.float32)
    lab, n = ndi.label(z > z_thr, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= min_voxels)
    keep = keep[keep > 0]
    cand = np.zeros_like(lab)
    scores = np.zeros(len(keep) + 1, np.float32)
    for new, old in enumerate(keep, start=1):
        sel = lab == old
        cand[sel] = new
        scores[new] = z[sel].max()
    # realism statistic: robust SD of the intensity difference after mean matching,
    # relative to the median fixed intensity (both in raw units)
    scale = float(np.median(f[mask]))
    raw_d = m * (f[mask].mean() / max(m[mask].mean(), 1e-6)) - f
    rd = raw_d[mask]
    spread = float(np.median(np.abs(rd - np.median(rd))) * 1.4826 / max(scale, 1e-6))
    return SubtractionResult(z, cand, scores, mask, spread, tx)
