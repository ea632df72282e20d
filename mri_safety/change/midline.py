"""Mid-sagittal plane of a brain image, for the ``side`` of a candidate.

The side of a finding is the side of the patient's mid-sagittal plane (MSP), not
of a world coordinate: the head need not sit at x = 0, and the centroid of the
brain mask is not the midline when the field of view cuts the head (a sagittal
slab of a decubitus head loses one hemisphere's lateral part and the centroid
moves toward the other side by centimetres).

The plane is found as in the classic symmetry methods (Ardekani et al., IEEE TMI
1997; Liu, Collins & Liu, NeuroImage 2001): the image is registered rigidly to
its own mirror image; the composition of the mirror and the transform is the
reflection that maps each point to its homologous point in the other
hemisphere, and the plane is the set of points that reflection leaves in place.

Conventions: points in world **RAS+** mm (x toward the patient's right); the
SimpleITK images are LPS internally, converted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from mri_safety.change.masks import img_like
from mri_safety.register.rigid import RigidParams, register

log = logging.getLogger(__name__)

#: candidates within this distance (mm) of the plane are on the midline
MIDLINE_MM = 3.0

#: LPS <-> RAS sign flip of the first two axes
_FLIP = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Midline:
    """A mid-sagittal plane: ``point_ras_mm`` on it, unit ``normal_ras`` pointing
    to the patient's right (positive RAS x component). ``method`` says how it was
    found (``mirror registration`` or the fallback ``brain centroid``)."""

    point_ras_mm: tuple[float, float, float]
    normal_ras: tuple[float, float, float]
    method: str

    def distance_mm(self, p_ras: tuple[float, float, float] | NDArray[np.floating]) -> float:
        """Signed distance (mm) of a world RAS point to the plane, > 0 on the right.

        >>> m = Midline((10.0, 0.0, 0.0), (1.0, 0.0, 0.0), "test")
        >>> m.distance_mm((4.0, 50.0, 0.0))
        -6.0
        """
        d = np.asarray(p_ras, np.float64) - np.asarray(self.point_ras_mm)
        return float(d @ np.asarray(self.normal_ras))

    def side(self, p_ras: tuple[float, float, float] | NDArray[np.floating]) -> str:
        """``right``, ``left`` or ``midline`` (within :data:`MIDLINE_MM`).

        >>> Midline((10.0, 0.0, 0.0), (1.0, 0.0, 0.0), "test").side((4.0, 0.0, 0.0))
        'left'
        """
        d = self.distance_mm(p_ras)
        return "midline" if abs(d) < MIDLINE_MM else ("right" if d > 0 else "left")

    def record(self) -> dict[str, Any]:
        """JSON record for ``parameters``."""
        return {"point_ras_mm": [round(v, 2) for v in self.point_ras_mm],
                "normal_ras": [round(v, 4) for v in self.normal_ras], "method": self.method}


def _centroid_lps(mask: NDArray[np.bool_], like: sitk.Image) -> NDArray[np.float64]:
    idx = np.argwhere(mask).mean(axis=0)  # [i, j, k] of the array = (x, y, z) index
    return np.asarray(like.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in idx]), np.float64)


def centroid_midline(mask: NDArray[np.bool_], like: sitk.Image) -> Midline:
    """Fallback: the sagittal world plane through the brain centroid (right if a
    registration to the mirror image fails)."""
    c = _centroid_lps(mask, like) * _FLIP
    return Midline((float(c[0]), float(c[1]), float(c[2])), (1.0, 0.0, 0.0), "brain centroid")


def find_midline(image: sitk.Image, brain: NDArray[np.bool_], seed: int = 20261125,
                 threads: int = 2) -> Midline:
    """Mid-sagittal plane of ``image`` (3D, any grid; ``brain``: bool ``[i, j, k]``
    mask on its grid, as :func:`~mri_safety.change.masks.arr` orders it).

    The image is mirrored in the world sagittal plane through the brain centroid
    (x' = 2c - x), registered rigidly to itself (Mattes MI, 4 and 2 mm levels,
    seeded sampling), and the reflection ``S = mirror o T`` is reduced to its
    plane: normal = the eigenvector of the symmetric part of its linear part
    with the most negative eigenvalue, point = midpoint of the brain centroid
    and its image. Falls back to :func:`centroid_midline` (with a log line) when
    the registration fails or its reflection is not close to one (eigenvalue
    above -0.9: a rotation of the head by more than about 25 degrees out of the
    world frame's sagittal plane, which the patient frame of DICOM does not
    produce).
    """
    if not brain.any():
        raise ValueError("find_midline: empty brain mask")
    img = sitk.Cast(image, sitk.sitkFloat32)
    c = _centroid_lps(brain, img)
    mirror = sitk.AffineTransform(3)
    mirror.SetMatrix([-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    mirror.SetTranslation([2.0 * float(c[0]), 0.0, 0.0])
    flipped = sitk.Resample(img, img, mirror, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # coarse levels only: the plane is needed to a few mm, not sub-voxel
    rp = RigidParams(level_spacing_mm=(4.0, 2.0), smoothing_mm=(2.0, 1.0),
                     sampling_fraction=(0.25, 0.25), step_mm=(4.0, 1.0),
                     min_step_mm=(0.05, 0.01), init="physical", seed=seed, threads=threads,
                     upsample_mm=None)
    try:
        res = register(img, flipped, fixed_mask=img_like(brain.astype(np.uint8), img), params=rp)
    except RuntimeError as e:  # sitk optimizer errors
        log.warning("mid-sagittal plane: mirror registration failed (%s); brain centroid used", e)
        return centroid_midline(brain, img)
    t = sitk.Euler3DTransform(res.transform)  # rigid, sitk backend: an Euler transform
    a_t = np.asarray(t.GetMatrix(), np.float64).reshape(3, 3)
    a = np.diag([-1.0, 1.0, 1.0]) @ a_t  # linear part of S = mirror o T (LPS)
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    if w[0] > -0.9:
        log.warning("mid-sagittal plane: mirror registration is not a reflection (eigenvalue "
                    "%.2f); brain centroid used", w[0])
        return centroid_midline(brain, img)
    s_c = np.asarray(mirror.TransformPoint(t.TransformPoint([float(x) for x in c])), np.float64)
    n = v[:, 0] * _FLIP
    n = n if n[0] >= 0 else -n
    p = 0.5 * (c + s_c) * _FLIP
    return Midline((float(p[0]), float(p[1]), float(p[2])),
                   (float(n[0]), float(n[1]), float(n[2])), "mirror registration")
