"""What counts as a new T1-BRIGHT focus on a T1-weighted image without contrast agent.

A T1 hyperintensity that matters for safety (subacute haemorrhage:
methaemoglobin; fat or other ectopic tissue) is brighter than normal white
matter, the brightest normal tissue of a T1w brain. Two rules follow:

* :func:`white_matter_level`: a follow-up increase counts only where the
  follow-up reaches ``ratio`` x the white-matter level. Below that, an
  increase is grey matter turning white-matter-like, which is what the
  partial volume of thick slices does when a rescan samples the head at other
  slice positions (measured on the real patient-positions pairs,
  docs/detection.md), not a new finding. ``ratio`` is the detector's
  ``hyper_ratio``, the same margin as the lesion-like rule of FLAIR/T2w.
* :func:`vessel_like`: a small bright structure of the follow-up (white
  top-hat) is inflow in a vessel unless it is part of a hyperintense region
  at least ``across_mm`` thick. Vessels are thin; a haematoma or a fat focus
  of that size is not.

Arrays are numpy ``[i, j, k]`` on one grid; spacing in world mm, array axis
order. Intensities are normalised (tissue median = 1).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from mri_safety.change.masks import dilate_mm, erode_mm

#: percentile of the tissue intensities taken as the white-matter level of a T1w
#: image: white matter is the brightest ~40 % of brain tissue on T1w, so the 90th
#: percentile lies within its peak (measured: 1.10-1.14 x the median on 2D spin-echo
#: T1, 1.47 on the synthetic 3D T1w whose white-matter mean is 1.45-1.5)
WM_PERCENTILE = 90.0


def white_matter_level(base: NDArray[np.floating], tissue: NDArray[np.bool_],
                       ratio: float) -> float:
    """Level a T1w follow-up must reach to be hyperintense: ``ratio`` x the
    white-matter level of the BASELINE (its tissue's :data:`WM_PERCENTILE`).

    >>> b = np.r_[np.full(60, 0.8), np.full(40, 1.2)]   # grey, white matter
    >>> round(white_matter_level(b, np.ones(100, bool), 1.2), 3)
    1.44
    """
    vals = np.asarray(base)[np.asarray(tissue, bool)]
    if vals.size == 0:
        raise ValueError("white_matter_level: empty tissue mask")
    return float(ratio * np.percentile(vals, WM_PERCENTILE))


def vessel_like(small_bright: NDArray[np.bool_], hyper: NDArray[np.bool_],
                spacing_mm: tuple[float, ...], across_mm: float = 6.0,
                margin_mm: float = 2.0) -> NDArray[np.bool_]:
    """Voxels of ``small_bright`` (the follow-up's small bright structures) that
    are not within ``margin_mm`` of a region of ``hyper`` (hyperintense voxels)
    at least ``across_mm`` thick somewhere (a ball of that diameter fits in it).

    >>> hyper = np.zeros((30, 30, 30), bool)
    >>> hyper[5:15, 5:15, 5:15] = True        # a 10 mm focus
    >>> hyper[20, 20, 2:28] = True             # a 1 mm vessel
    >>> small = hyper.copy()                   # both marked by the top-hat
    >>> v = vessel_like(small, hyper, (1.0, 1.0, 1.0))
    >>> bool(v[10, 10, 10]), bool(v[20, 20, 15])
    (False, True)
    """
    hyper = np.asarray(hyper, bool)
    core = erode_mm(hyper, across_mm / 2.0, spacing_mm)
    blob = ndi.binary_propagation(core, mask=hyper) if core.any() else core
    return np.asarray(small_bright, bool) & ~dilate_mm(blob, margin_mm, spacing_mm)
