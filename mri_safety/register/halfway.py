"""Symmetric halfway space: both time points resampled once into the midpoint space.

Images are SimpleITK images (LPS+, world mm). Given the registration transform
``T`` (fixed/baseline points -> moving/follow-up points), the half transform
``H`` satisfies ``H(H(x)) = T(x)``. Midpoint coordinates ``y`` map to the fixed
image through ``H^-1`` and to the moving image through ``T o H^-1 = H``, so each
image is interpolated exactly once (as in MSSEG-2 / FreeSurfer longitudinal),
and neither time point is favoured by an extra interpolation blur.

For a rigid ``T`` (rotation ``R``, translation ``b``) the half rotation is the
rotation vector halved (axis-angle) and the half translation solves
``(R_h + I) c = b``. For an affine ``T`` the principal matrix square root
(``scipy.linalg.sqrtm``) is used.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.linalg import sqrtm
from scipy.spatial.transform import Rotation

from mri_safety.register.transforms import affine_matrix


def half_transform(t: sitk.Transform) -> sitk.AffineTransform:
    """Return ``H`` with ``H o H = t`` for a rigid or affine transform (LPS mm)."""
    a, b = affine_matrix(t)
    u, _, vt = np.linalg.svd(a)
    if np.allclose(a, u @ vt, atol=1e-6) and np.linalg.det(a) > 0:
        rh = Rotation.from_rotvec(Rotation.from_matrix(a).as_rotvec() / 2).as_matrix()
    else:
        rh = np.real(sqrtm(a))
    c = np.linalg.solve(rh + np.eye(3), b)
    h = sitk.AffineTransform(3)
    h.SetMatrix([float(v) for v in rh.ravel()])
    h.SetTranslation([float(v) for v in c])
    return h


def halfway_grid(fixed: sitk.Image, half: sitk.AffineTransform,
                 spacing: tuple[float, float, float] | None = None) -> sitk.Image:
    """A reference grid for the midpoint space: the fixed grid moved by ``H^-1``.

    A fixed point ``x`` sits at midpoint coordinate ``H^-1(x)``; the grid keeps
    the fixed image's size and extent (optionally a new ``spacing`` in mm with the
    same extent).
    """
    hinv = half.GetInverse()
    a, b = affine_matrix(hinv)
    d = np.asarray(fixed.GetDirection()).reshape(3, 3)
    u, _, vt = np.linalg.svd(a @ d)
    d2 = u @ vt  # nearest rotation (exact for rigid H)
    origin = np.asarray(hinv.TransformPoint(fixed.GetOrigin()))
    size = np.asarray(fixed.GetSize())
    sp = np.asarray(fixed.GetSpacing())
    if spacing is not None:
        new_sp = np.asarray(spacing, dtype=float)
        size = np.maximum(1, np.round(size * sp / new_sp)).astype(int)
        sp = new_sp
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in sp])
    ref.SetDirection([float(v) for v in d2.ravel()])
    ref.SetOrigin([float(v) for v in origin])
    return ref


def to_halfway(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
               spacing: tuple[float, float, float] | None = None,
               interpolator: int = sitk.sitkBSpline,
               ) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """Resample both images once into the midpoint space.

    Returns ``(fixed_half, moving_half, half)`` (float32, same grid). For a
    midpoint point ``y`` the fixed point is ``half.GetInverse()(y)`` and the
    moving point is ``half(y)``.
    """
    h = half_transform(transform)
    ref = halfway_grid(fixed, h, spacing)
    f = sitk.Resample(fixed, ref, h.GetInverse(), interpolator, 0.0, sitk.sitkFloat32)
    m = sitk.Resample(moving, ref, h, interpolator, 0.0, sitk.sitkFloat32)
    return f, m, h
