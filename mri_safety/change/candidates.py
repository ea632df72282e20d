"""Candidate extraction from a z-map: hysteresis, 26-connected components, size.

Arrays are numpy ``[i, j, k]`` in the baseline image's voxel space; ``affine``
maps voxel indices to world RAS+ mm (NIfTI convention). Centroids are reported
both in baseline voxel indices (continuous, 0-based) and in world RAS mm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

S26 = np.ones((3, 3, 3), bool)


@dataclass
class Component:
    """One connected region of significant change (one sign).

    sign: +1 (follow-up brighter) or -1 (darker). peak_z / mean_z are signed.
    voxels: flat indices into the baseline grid (C order of the ``[i, j, k]`` array).
    centroid_voxel: continuous baseline voxel index; centroid_ras_mm: world RAS+ mm.
    """

    sign: int
    voxels: NDArray[np.int64]
    peak_z: float
    mean_z: float
    volume_mm3: float
    centroid_voxel: tuple[float, float, float]
    centroid_ras_mm: tuple[float, float, float]
    extra: dict[str, float] = field(default_factory=dict)


def location_words(loc: Any, with_depth: bool = False) -> str:
    """A candidate's ``location`` in words, for titles and report rows: its word
    values in order, without numbers, coordinate lists or ``unknown``; with
    ``with_depth`` the depth below the brain surface is added as ``N mm deep``.

    >>> loc = {"region": "brain", "tissue": "deep", "side": "left",
    ...        "depth_from_brain_surface_mm": 12.4, "anatomical_region": "unknown",
    ...        "mni_ras_mm": [-20.0, 10.0, 30.0]}
    >>> location_words(loc)
    'brain deep left'
    >>> location_words(loc, with_depth=True)
    'brain deep left 12 mm deep'
    >>> location_words({"region": "spine", "level": "C3"})
    'spine C3'
    """
    if not isinstance(loc, Mapping):
        return str(loc or "")
    parts = [str(v) for v in loc.values()
             if not isinstance(v, int | float | list | tuple) and v != "unknown"]
    depth = loc.get("depth_from_brain_surface_mm")
    if with_depth and depth is not None:
        parts.append(f"{float(depth):.0f} mm deep")
    return " ".join(parts)


def voxel_to_ras(affine: NDArray[np.floating], ijk: NDArray[np.floating]) -> NDArray[np.float64]:
    """Map voxel indices (..., 3) to world RAS+ mm with a 4x4 NIfTI affine."""
    a = np.asarray(affine, np.float64)
    p = np.asarray(ijk, np.float64)
    return p @ a[:3, :3].T + a[:3, 3]


def hysteresis(score: NDArray[np.floating], low: float, high: float,
               allowed: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.int32], int]:
    """26-connected components of ``score >= low`` (within ``allowed``) that reach ``high``.

    Returns ``(labels, n)`` with labels renumbered 1..n in order of first voxel.
    """
    s = np.asarray(score)
    low_m = s >= low
    if allowed is not None:
        low_m &= np.asarray(allowed, bool)
    lab, n = ndi.label(low_m, structure=S26)
    if n == 0:
        return lab.astype(np.int32), 0
    peak = ndi.maximum(s, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(np.asarray(peak) >= high) + 1
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[lab], int(len(keep))


def extract(z: NDArray[np.floating], affine: NDArray[np.floating], z_low: float, z_seed: float,
            min_volume_mm3: float, allowed_pos: NDArray[np.bool_] | None = None,
            allowed_neg: NDArray[np.bool_] | None = None,
            signs: tuple[int, ...] = (1, -1)) -> list[Component]:
    """Candidate components of both signs from the signed z-map.

    For each sign ``s``: hysteresis on ``s * z`` (extent ``z_low``, seed
    ``z_seed``) inside ``allowed_pos`` / ``allowed_neg``; components smaller than
    ``min_volume_mm3`` are dropped. Voxel volume comes from ``affine``.
    Output is sorted by descending |peak z|, ties by centroid voxel (deterministic).
    """
    zz = np.asarray(z, np.float32)
    vox_mm3 = float(abs(np.linalg.det(np.asarray(affine, np.float64)[:3, :3])))
    out: list[Component] = []
    for s in signs:
        allowed = allowed_pos if s > 0 else allowed_neg
        sz = s * zz
        lab, n = hysteresis(sz, z_low, z_seed, allowed)
        if n == 0:
            continue
        objs = ndi.find_objects(lab)
        for idx, sl in enumerate(objs, start=1):
            if sl is None:
                continue
            local = lab[sl] == idx
            nvox = int(local.sum())
            vol = nvox * vox_mm3
            if vol < min_volume_mm3:
                continue
            coords = np.argwhere(local) + np.array([q.start for q in sl])
            vals = sz[tuple(coords.T)]
            cen = coords.mean(axis=0)
            ras = voxel_to_ras(affine, cen)
            flat = np.ravel_multi_index(tuple(coords.T), zz.shape).astype(np.int64)
            out.append(Component(
                sign=int(s), voxels=np.sort(flat), peak_z=float(s * vals.max()),
                mean_z=float(s * vals.mean()), volume_mm3=float(vol),
                centroid_voxel=(float(cen[0]), float(cen[1]), float(cen[2])),
                centroid_ras_mm=(float(ras[0]), float(ras[1]), float(ras[2]))))
    out.sort(key=lambda c: (-abs(c.peak_z), c.centroid_voxel))
    return out


def label_map(components: list[Component], shape: tuple[int, ...],
              ids: list[int] | None = None) -> NDArray[np.int32]:
    """Integer label map (baseline voxel space): voxel value = candidate id (0 = none)."""
    out = np.zeros(int(np.prod(shape)), np.int32)
    for n, c in enumerate(components):
        out[c.voxels] = (ids[n] if ids is not None else n + 1)
    return out.reshape(shape)
