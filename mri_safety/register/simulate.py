"""Known misalignment for testing registration: a real image moved by a known
rigid transform, with a smooth multiplicative bias field and Rician noise.

Shared by the registration tests and ``benchmarks/register.py`` so both
measure the same problem.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def known_motion(
    img: sitk.Image,
    centre: tuple[float, float, float],
    rot_deg: tuple[float, float, float] = (7.0, -4.0, 3.0),
    shift_mm: tuple[float, float, float] = (10.0, -6.0, 4.0),
    noise: float = 0.03,
    seed: int = 1234,
) -> tuple[sitk.Image, sitk.Transform]:
    """Return (moved image, true fixed -> moving transform).

    ``centre`` is the rotation centre in world LPS mm (SimpleITK); angles in
    degrees about x, y, z; ``shift_mm`` in LPS mm. The moving voxel at ``y``
    shows the baseline point ``S(y)``, so a baseline point ``x`` sits at
    ``S^-1(x)``: the returned transform is ``S^-1``. The bias field is
    ``exp(0.3 sin(pi x) cos(2 z) + 0.2 y)`` over normalised voxel coordinates;
    Rician noise has sigma ``noise`` x the 90th percentile of the image.
    """
    s = sitk.Euler3DTransform()
    s.SetCenter(centre)
    s.SetRotation(*[float(np.deg2rad(r)) for r in rot_deg])
    s.SetTranslation(shift_mm)
    mv = sitk.Resample(img, img, s, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(mv).astype(np.float64)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in arr.shape], indexing="ij")
    field = np.exp(0.3 * np.sin(np.pi * x) * np.cos(2 * z) + 0.2 * y)
    rng = np.random.default_rng(seed)
    sig = noise * np.percentile(arr[arr > 0], 90)
    noisy = np.sqrt((arr * field + rng.normal(0, sig, arr.shape)) ** 2
                    + rng.normal(0, sig, arr.shape) ** 2).astype(np.float32)
    out = sitk.GetImageFromArray(noisy)
    out.CopyInformation(mv)
    return out, s.GetInverse()
