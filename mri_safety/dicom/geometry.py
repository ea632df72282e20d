"""Slice-stack geometry: DICOM LPS+ header values -> NIfTI RAS+ affine, plus stack checks.

Conventions used throughout this module:

* DICOM patient coordinates are **LPS+** in world mm (x to the patient's left,
  y to posterior, z to head). The patient coordinate system is attached to the
  patient, so it already accounts for PatientPosition (HFS, HFP, HFDL, HFDR,
  FFS, ...): the affine from ImageOrientationPatient / ImagePositionPatient is
  right for every position without any position-specific flip.
* ``ImageOrientationPatient`` (IOP) holds six direction cosines: the first
  three are the direction of increasing **column** index (along a row), the
  last three the direction of increasing **row** index (down a column).
* ``PixelSpacing`` is ``(row spacing, column spacing)`` in mm: the distance
  between row centres (step in the row index) first, then between column
  centres (step in the column index).
* Voxel axes of the volumes built here: ``i`` = DICOM column index, ``j`` =
  DICOM row index, ``k`` = slices sorted by ascending position along the slice
  normal ``n = row_cosine x column_cosine`` (LPS).
* NIfTI affines map voxel indices ``(i, j, k)`` to world **RAS+** mm; LPS is
  turned into RAS by negating x and y.

The checks here are pure functions on header numbers (no files); the caller
(:mod:`mri_safety.dicom.volume`) turns :class:`GeometryError` into a
``ConversionError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: Multiplying an LPS+ affine on the left by this gives the RAS+ affine.
LPS_TO_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Positions closer than this along the slice normal (mm) are the same slice
#: location (repeats = time points). Far below any real slice spacing, far
#: above header rounding (IPP is written with ~1e-4..1e-3 mm precision).
SAME_POSITION_TOL_MM = 0.05


class GeometryError(ValueError):
    """The slice headers do not describe one regular stack (message has the numbers)."""


def orientation_cosines(iop: ArrayLike, atol: float = 1e-3) -> tuple[FloatArray, FloatArray]:
    """Return ``(row_cosine, column_cosine)`` (LPS unit vectors) from the 6 IOP values.

    ``row_cosine`` is the direction of increasing column index ``i`` and
    ``column_cosine`` the direction of increasing row index ``j``. Raises
    :class:`GeometryError` when the two are not unit length or not orthogonal
    within ``atol`` (the vectors are then renormalised and orthogonalised by
    nothing: a broken header is an error, not something to guess around).
    """
    v = np.asarray(iop, dtype=np.float64).ravel()
    if v.size != 6 or not np.all(np.isfinite(v)):
        raise GeometryError(f"ImageOrientationPatient must hold 6 finite numbers, got {v.tolist()}")
    r, c = v[:3], v[3:]
    nr, nc, dot = float(np.linalg.norm(r)), float(np.linalg.norm(c)), float(r @ c)
    if abs(nr - 1) > atol or abs(nc - 1) > atol or abs(dot) > atol:
        raise GeometryError(
            "ImageOrientationPatient is not two orthonormal vectors: "
            f"|row|={nr:.5f}, |col|={nc:.5f}, row.col={dot:.5f}"
        )
    return r / nr, c / nc


def slice_normal(iop: ArrayLike) -> FloatArray:
    """Unit slice normal ``row_cosine x column_cosine`` in LPS (no unit: direction)."""
    r, c = orientation_cosines(iop)
    n = np.cross(r, c)
    return np.asarray(n / np.linalg.norm(n), dtype=np.float64)


def same_orientation(iop_a: ArrayLike, iop_b: ArrayLike, atol: float = 1e-4) -> bool:
    """True when two IOP vectors agree within ``atol`` per direction cosine."""
    a = np.asarray(iop_a, dtype=np.float64).ravel()
    b = np.asarray(iop_b, dtype=np.float64).ravel()
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol))


def affine_lps(
    iop: ArrayLike, ipp: ArrayLike, pixel_spacing: ArrayLike, slice_vector: ArrayLike
) -> FloatArray:
    """Voxel ``(i, j, k)`` -> world LPS+ mm affine (4x4).

    ``ipp`` is the LPS position (mm) of the centre of voxel (0, 0, 0), i.e. the
    first transmitted pixel of the first slice; ``pixel_spacing`` is DICOM
    ``(row spacing, column spacing)`` mm; ``slice_vector`` is the LPS mm step
    from slice ``k`` to ``k + 1``.
    """
    r, c = orientation_cosines(iop)
    dr, dc = (float(x) for x in np.asarray(pixel_spacing, dtype=np.float64).ravel()[:2])
    aff = np.eye(4)
    aff[:3, 0] = r * dc  # i = column index moves along the row cosine by the column spacing
    aff[:3, 1] = c * dr  # j = row index moves along the column cosine by the row spacing
    aff[:3, 2] = np.asarray(slice_vector, dtype=np.float64).ravel()
    aff[:3, 3] = np.asarray(ipp, dtype=np.float64).ravel()
    return aff


def lps_to_ras(affine: ArrayLike) -> FloatArray:
    """Turn a voxel -> LPS+ mm affine into a voxel -> RAS+ mm affine."""
    return np.asarray(LPS_TO_RAS @ np.asarray(affine, dtype=np.float64), dtype=np.float64)


def affine_ras(
    iop: ArrayLike, ipp: ArrayLike, pixel_spacing: ArrayLike, slice_vector: ArrayLike
) -> FloatArray:
    """Voxel ``(i, j, k)`` -> world RAS+ mm affine; see :func:`affine_lps` for arguments."""
    return lps_to_ras(affine_lps(iop, ipp, pixel_spacing, slice_vector))


def shear_angle_deg(affine: ArrayLike) -> float:
    """Angle (degrees) between the slice axis (3rd column) and the in-plane normal.

    0 for an orthogonal stack; a gantry tilt or sheared stack gives the tilt.
    """
    a = np.asarray(affine, dtype=np.float64)
    n = np.cross(a[:3, 0], a[:3, 1])
    s = a[:3, 2]
    cosang = abs(float(n @ s)) / (float(np.linalg.norm(n) * np.linalg.norm(s)) or 1.0)
    return float(np.degrees(np.arccos(min(1.0, cosang))))


@dataclass
class StackLayout:
    """How N slice records form a (P positions x T time points) stack.

    ``order[k, t]`` is the index (into the input list) of the slice at sorted
    position ``k`` (ascending along the LPS slice normal) and time point ``t``.
    Distances are world mm along the slice normal (LPS).
    """

    order: NDArray[np.intp]
    positions_mm: FloatArray  # (P,) distance of each slice position along the normal
    normal: FloatArray  # LPS unit normal
    spacing_mm: float  # median step between consecutive positions (0 for one slice)
    steps_mm: FloatArray  # (P-1,) steps between consecutive positions
    slice_vector: FloatArray  # LPS mm step per k (for the affine)
    first_ipp: FloatArray  # LPS mm of voxel (0,0) of slice k=0
    tilt_deg: float  # angle between the first->last offset and the normal
    inplane_residual_mm: float  # worst distance of a slice origin from the first->last line
    gaps: list[tuple[int, float]] = field(default_factory=list)  # (k before gap, gap mm)
    nonuniform: list[tuple[int, float]] = field(default_factory=list)  # (k, step mm)

    @property
    def n_positions(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_times(self) -> int:
        return int(self.order.shape[1])


def layout_stack(
    ipps: ArrayLike,
    iop: ArrayLike,
    time_keys: Sequence[tuple[int, ...]] | None = None,
    *,
    spacing_rel_tol: float = 0.01,
    spacing_abs_tol_mm: float = 0.01,
    gap_factor: float = 1.5,
) -> StackLayout:
    """Sort slices into positions (and repeats into time points) and measure regularity.

    ``ipps`` is (N, 3) LPS mm; ``iop`` the six cosines shared by all slices;
    ``time_keys[n]`` sorts repeats of one position in time (e.g.
    ``(TemporalPositionIdentifier, AcquisitionNumber, InstanceNumber)``).

    Raises :class:`GeometryError` for an unequal number of repeats per position
    (time points with missing slices). Does **not** raise for gaps, non-uniform
    steps or tilt: those are measured into the layout (``gaps``,
    ``nonuniform``, ``tilt_deg``, ``inplane_residual_mm``) for the caller to
    judge. A step is non-uniform when it differs from the median step by more
    than ``max(spacing_abs_tol_mm, spacing_rel_tol * median)``; a gap is a step
    larger than ``gap_factor * median``.
    """
    pts = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    n_slices = pts.shape[0]
    if n_slices == 0:
        raise GeometryError("no slices")
    normal = slice_normal(iop)
    dist = pts @ normal
    keys = list(time_keys) if time_keys is not None else [(i,) for i in range(n_slices)]
    if len(keys) != n_slices:
        raise GeometryError(f"{len(keys)} time keys for {n_slices} slices")

    # Cluster by distance along the normal: repeats of one position become time points.
    by_dist = np.argsort(dist, kind="stable")
    clusters: list[list[int]] = [[int(by_dist[0])]]
    for a, b in zip(by_dist[:-1], by_dist[1:], strict=True):
        if dist[b] - dist[a] > SAME_POSITION_TOL_MM:
            clusters.append([int(b)])
        else:
            clusters[-1].append(int(b))
    counts = [len(c) for c in clusters]
    if len(set(counts)) != 1:
        hist: dict[int, int] = {}
        for c in counts:
            hist[c] = hist.get(c, 0) + 1
        desc = ", ".join(f"{npos} position(s) x {rep}" for rep, npos in sorted(hist.items()))
        raise GeometryError(
            f"unequal number of slices per time point: {len(clusters)} slice positions "
            f"have different repeat counts ({desc}); a time point is incomplete"
        )
    n_t = counts[0]
    order = np.empty((len(clusters), n_t), dtype=np.intp)
    for k, members in enumerate(clusters):
        members_sorted = sorted(members, key=lambda m: (keys[m], m))
        order[k, :] = members_sorted
    # Also check the repeats line up across positions: the in-plane location of
    # every repeat of one position must agree (a moved FOV between time points
    # is not a single 4D stack).
    if n_t > 1:
        spread = np.max(np.linalg.norm(pts[order] - pts[order[:, :1]], axis=-1))
        if spread > SAME_POSITION_TOL_MM:
            raise GeometryError(
                f"repeats of one slice position differ by up to {spread:.3f} mm in "
                "ImagePositionPatient: the time points do not share one geometry"
            )

    first = order[:, 0]
    pos = dist[first]
    steps = np.diff(pos)
    n_pos = len(first)
    p0 = pts[first[0]]
    if n_pos > 1:
        median = float(np.median(steps))
        tol = max(spacing_abs_tol_mm, spacing_rel_tol * median)
        gaps = [(int(k), float(s)) for k, s in enumerate(steps) if s > gap_factor * median]
        gap_ks = {k for k, _ in gaps}
        nonuni = [
            (int(k), float(s))
            for k, s in enumerate(steps)
            if abs(s - median) > tol and k not in gap_ks
        ]
        extent = float(pos[-1] - pos[0])
        offset = pts[first[-1]] - p0
        inplane = offset - (offset @ normal) * normal
        tilt = float(np.degrees(np.arctan2(np.linalg.norm(inplane), abs(extent))))
        # Distance of each slice origin from the straight line first -> last.
        line = offset / np.linalg.norm(offset)
        rel = pts[first] - p0
        resid = rel - np.outer(rel @ line, line)
        resid_max = float(np.max(np.linalg.norm(resid, axis=1)))
        slice_vector = offset / (n_pos - 1)
    else:
        median, gaps, nonuni, tilt, resid_max = 0.0, [], [], 0.0, 0.0
        slice_vector = normal.copy()  # caller replaces with thickness/spacing
    return StackLayout(
        order=order,
        positions_mm=pos,
        normal=normal,
        spacing_mm=median,
        steps_mm=steps,
        slice_vector=np.asarray(slice_vector, dtype=np.float64),
        first_ipp=p0.copy(),
        tilt_deg=tilt,
        inplane_residual_mm=resid_max,
        gaps=gaps,
        nonuniform=nonuni,
    )


def describe_steps(steps: FloatArray, limit: int = 6) -> str:
    """Short human summary of slice steps (mm) for messages."""
    if steps.size == 0:
        return "one slice"
    uniq, counts = np.unique(np.round(steps, 3), return_counts=True)
    parts = [f"{u:g} mm x{c}" for u, c in zip(uniq[:limit], counts[:limit], strict=True)]
    more = "" if uniq.size <= limit else f", ... ({uniq.size} distinct)"
    return ", ".join(parts) + more
