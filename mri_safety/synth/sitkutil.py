"""Conversions between (array, RAS affine) and SimpleITK images (LPS).

NIfTI-style arrays are indexed [i, j, k] with a voxel -> world RAS+ mm affine;
SimpleITK images are indexed (x=i, y=j, z=k) with LPS+ origin and direction.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

_FLIP = np.diag([-1.0, -1.0, 1.0])


def array_to_sitk(arr: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Array [i, j, k] + voxel -> RAS affine  ->  SimpleITK image (LPS geometry)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    a = np.asarray(affine, float)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction = _FLIP @ (a[:3, :3] / spacing)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    img.SetOrigin(tuple(float(v) for v in _FLIP @ a[:3, 3]))
    return img


def sitk_to_array(img: sitk.Image) -> np.ndarray:
    """SimpleITK image -> array indexed [i, j, k]."""
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def sitk_affine(img: sitk.Image) -> np.ndarray:
    """Voxel -> world RAS+ mm affine of a SimpleITK image."""
    d = np.array(img.GetDirection(), float).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = _FLIP @ d @ np.diag(img.GetSpacing())
    a[:3, 3] = _FLIP @ np.array(img.GetOrigin(), float)
    return a


def ras_matrix_to_sitk(m: np.ndarray) -> sitk.AffineTransform:
    """4x4 RAS mm point mapping -> equivalent ITK AffineTransform (LPS)."""
    f = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = f @ np.asarray(m, float) @ f
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    t.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return t


def mattes_register(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image,
                    init: sitk.Transform, *, sampling: float, min_step: float,
                    iterations: int, sigmas: tuple[float, float]) -> sitk.Transform:
    """The generator's registrations (MNI template -> head, spine T2 -> T1): Mattes MI
    (32 bins, regular sampling of ``sampling`` of the fixed-mask voxels, seeded),
    regular-step gradient descent from step 1 mm down to ``min_step``, two levels
    (shrink 2, 1; smoothing ``sigmas`` in mm). Maps fixed points to moving points
    (ITK convention, LPS mm).

    Every filter runs on one ITK thread: Mattes MI summed over threads differed by
    thread count and from run to run (2e-5 in the MNI affine with 2 threads), and the
    registration's own ``SetNumberOfThreads(1)`` did not make it bit-identical, so
    synthetic studies of one seed differed between machines."""
    from mri_safety.threads import itk_threads

    with itk_threads(1):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(sampling, seed=12345)
        reg.SetMetricFixedMask(fixed_mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, min_step, iterations,
                                                     relaxationFactor=0.6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel(list(sigmas))
        reg.SetInitialTransform(init, inPlace=False)
        return reg.Execute(fixed, moving)
