"""Display geometry shared by the evidence pictures.

Convention (stated on every picture): **radiological** display. Axial and
coronal panels show the patient's right on the viewer's left; axial panels
have anterior at the top, coronal and sagittal panels superior at the top;
sagittal panels have anterior on the viewer's left (face to the left, as
radiology viewers show it).

Images are first brought to an RAS-canonical voxel grid (voxel axes i, j, k
pointing to patient Right, Anterior, Superior): axis-aligned images are only
reordered/flipped (``nibabel.as_closest_canonical``, no interpolation);
oblique images are resampled onto an RAS grid with the same voxel sizes
(``nibabel.processing.resample_to_output``), so the letters are correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output
from numpy.typing import NDArray

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
CONVENTION = "radiological: patient R on viewer's left; sagittal: anterior on left"

#: letters at the left / right / top / bottom edge of each plane's display
LETTERS: dict[str, dict[str, str]] = {
    "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
    "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
    "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
}


@dataclass
class Slice2D:
    """A 2D display array (row 0 at the top, column 0 at the left), the
    centroid's position in it (``marker_rc``, continuous row/column index),
    pixel size in mm (row height, column width) and the edge letters."""

    data: NDArray[np.float32]
    marker_rc: tuple[float, float]
    pixel_mm: tuple[float, float]
    letters: dict[str, str]


def is_axis_aligned(affine: NDArray[np.floating], tol: float = 1e-3) -> bool:
    """True when every voxel axis is parallel to a world axis."""
    a = np.abs(np.asarray(affine, dtype=float)[:3, :3])
    a = a / a.max(axis=0, keepdims=True)
    return bool(np.all((a < tol) | (a > 1 - tol)) and np.all((a > 1 - tol).sum(axis=0) == 1))


def to_ras(img: nib.spatialimages.SpatialImage, order: int = 1) -> nib.Nifti1Image:
    """The image on an RAS-canonical grid (see module docstring); 4D: first
    volume. ``order``: spline order when an oblique image must be resampled
    (0 for label/mask images)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    im = nib.Nifti1Image(data, np.asarray(img.affine, dtype=float))
    canon = nib.as_closest_canonical(im)
    if is_axis_aligned(im.affine):
        return canon
    # voxel sizes of the nearest RAS axes (e.g. a thick sagittal slab keeps its
    # thick spacing along x)
    zooms = np.linalg.norm(canon.affine[:3, :3], axis=0)
    return resample_to_output(im, voxel_sizes=tuple(float(z) for z in zooms), order=order,
                              mode="constant", cval=0.0)


def world_to_voxel(affine: NDArray[np.floating], ras_mm: tuple[float, float, float]
                   ) -> NDArray[np.float64]:
    """Continuous voxel index of a world RAS+ mm point."""
    p = np.linalg.inv(np.asarray(affine, dtype=float)) @ np.array([*ras_mm, 1.0])
    return p[:3]


def slice_through(data: NDArray[np.floating], affine: NDArray[np.floating],
                  centre_ras_mm: tuple[float, float, float], plane: Plane,
                  fov_mm: float | None = None) -> Slice2D:
    """Display slice of an RAS-canonical volume through a world point.

    ``fov_mm``: crop to a square of this size (mm) around the point (clamped at
    the image edges); ``None`` = whole slice.
    """
    d = np.asarray(data, dtype=np.float32)
    z = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    c = world_to_voxel(affine, centre_ras_mm)
    idx = [int(np.clip(round(float(c[a])), 0, d.shape[a] - 1)) for a in range(3)]
    # Each 2D array below is [horizontal voxel axis, vertical voxel axis];
    # transposing puts the vertical axis on rows, and both flips make row 0 the
    # superior/anterior end and column 0 the patient's right (or anterior).
    if plane == "axial":
        a2, h, v = d[:, :, idx[2]], 0, 1
    elif plane == "coronal":
        a2, h, v = d[:, idx[1], :], 0, 2
    else:
        a2, h, v = d[idx[0], :, :], 1, 2
    disp = np.ascontiguousarray(a2.T[::-1, ::-1])
    nh, nv = d.shape[h], d.shape[v]
    row, col = (nv - 1) - float(c[v]), (nh - 1) - float(c[h])
    pix = (float(z[v]), float(z[h]))
    if fov_mm is not None:
        hr = int(round(fov_mm / 2 / pix[0]))
        hc = int(round(fov_mm / 2 / pix[1]))
        r0 = int(np.clip(round(row) - hr, 0, max(0, disp.shape[0] - 2 * hr)))
        c0 = int(np.clip(round(col) - hc, 0, max(0, disp.shape[1] - 2 * hc)))
        disp = disp[r0:r0 + 2 * hr, c0:c0 + 2 * hc]
        row, col = row - r0, col - c0
    return Slice2D(disp, (row, col), pix, dict(LETTERS[plane]))


def window(data: NDArray[np.floating], lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    """Display window from percentiles of the non-zero voxels (subsampled)."""
    v = np.asarray(data).ravel()
    v = v[:: max(1, v.size // 2_000_000)]
    v = v[v != 0]
    if v.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo, hi])
    return float(a), float(b if b > a else a + 1.0)
