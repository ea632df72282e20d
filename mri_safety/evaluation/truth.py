"""Synthetic truth labels brought onto the grid of a compared series.

The generator (:mod:`mri_safety.synth`) writes each abnormality as an integer
label on a fine grid (0.5 mm). A comparison runs on the grid of its baseline
series, whose voxels can be 2 x 2 x 4 mm or coarser. :func:`truth_on_grid`
says which voxels of that grid hold each abnormality:

* a grid voxel belongs to an abnormality when the linearly resampled indicator
  at its centre exceeds 0.25 (the benchmarks' rule since issue 5);
* an abnormality that this leaves empty (smaller than the gaps between the
  grid's voxel centres: a 3 mm sphere between two 4 mm slice centres) gets
  the grid voxel(s) it covers most, by the fraction of each voxel's volume it
  fills (``sub`` x ``sub`` x ``sub`` points per voxel). Without this, such an
  abnormality had no voxel on the grid: a candidate on it could not touch it,
  so it was scored as missed and the candidate as a false positive.

Points go from the grid's world (LPS mm, SimpleITK) to the labels' world
through ``to_labels`` (identity by default).

>>> import SimpleITK as sitk, numpy as np
>>> fine = sitk.Image(40, 40, 40, sitk.sitkUInt8); fine.SetSpacing((0.5, 0.5, 0.5))
>>> z, y, x = np.mgrid[:40, :40, :40]
>>> ball = (((x - 19.5) ** 2 + (y - 19.5) ** 2 + (z - 19.5) ** 2) * 0.25 <= 1.5 ** 2)
>>> lab = sitk.GetImageFromArray(ball.astype(np.uint8)); lab.CopyInformation(fine)
>>> grid = sitk.Image(10, 10, 5, sitk.sitkFloat32); grid.SetSpacing((2.0, 2.0, 4.0))
>>> ind = sitk.Cast(lab, sitk.sitkFloat32)  # a 3 mm ball, z 8.25-11.25 mm: no slice centre
>>> int((arr(sitk.Resample(ind, grid, sitk.Transform(), sitk.sitkLinear, 0.0)) > 0.25).sum())
0
>>> np.argwhere(truth_on_grid(lab, [1], grid)[1]).tolist()   # the voxel it fills most
[[5, 5, 2]]
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from mri_safety.change.masks import arr, img_like


def truth_on_grid(labels: sitk.Image, ids: list[int], grid: sitk.Image,
                  to_labels: sitk.Transform | None = None, sub: int = 4
                  ) -> dict[int, NDArray[np.bool_]]:
    """Mask (``[i, j, k]`` of ``grid``) of each label id of ``labels``; see the
    module docstring. ``to_labels`` maps grid points (LPS mm) to the labels'
    world and must be invertible when an abnormality needs the coverage rule."""
    out: dict[int, NDArray[np.bool_]] = {}
    lab = arr(labels)
    tx = to_labels if to_labels is not None else sitk.Transform()
    for i in ids:
        sel = lab == i
        ind = img_like(sel.astype(np.float32), labels)
        m = arr(sitk.Resample(ind, grid, tx, sitk.sitkLinear, 0.0)) > 0.25
        if not m.any() and sel.any():
            m = _most_covered(sel, labels, grid, tx, sub)
        out[i] = m
    return out


def _most_covered(sel: NDArray[np.bool_], labels: sitk.Image, grid: sitk.Image,
                  tx: sitk.Transform, sub: int) -> NDArray[np.bool_]:
    """The grid voxel(s) of largest covered volume fraction of ``sel``."""
    # grid voxels near the label's bounding box (its corners through the inverse map)
    nz = np.nonzero(sel)
    lo, hi = [int(a.min()) - 1 for a in nz], [int(a.max()) + 1 for a in nz]
    inv = tx.GetInverse()
    corners = []
    for c in itertools.product(*zip(lo, hi, strict=True)):
        p = inv.TransformPoint(labels.TransformContinuousIndexToPhysicalPoint(
            [float(v) for v in c]))
        corners.append(grid.TransformPhysicalPointToContinuousIndex(p))
    cs = np.array(corners)
    size = np.array(grid.GetSize())
    g_lo = np.clip(np.floor(cs.min(0)).astype(int) - 1, 0, size - 1)
    g_hi = np.clip(np.ceil(cs.max(0)).astype(int) + 1, 0, size - 1)
    box = [np.arange(a, b + 1) for a, b in zip(g_lo, g_hi, strict=True)]
    off = (np.arange(sub) + 0.5) / sub - 0.5
    cover = np.zeros([len(b) for b in box])
    lsize = np.array(sel.shape)
    for idx in itertools.product(*[range(len(b)) for b in box]):
        hits = 0
        for d in itertools.product(off, off, off):
            ci = [float(box[a][idx[a]] + d[a]) for a in range(3)]
            p = tx.TransformPoint(grid.TransformContinuousIndexToPhysicalPoint(ci))
            li = np.rint(labels.TransformPhysicalPointToContinuousIndex(p)).astype(int)
            if np.all(li >= 0) and np.all(li < lsize) and sel[tuple(li)]:
                hits += 1
        cover[idx] = hits
    m = np.zeros(tuple(int(s) for s in size), bool)
    if cover.max() > 0:
        where = np.nonzero(cover == cover.max())
        m[tuple(box[a][where[a]] for a in range(3))] = True
    return m
