"""Lesion-wise scoring of flagged candidates against expert/true change lesions.

Rules (fixed for the project, as in ``../shared/notes/measured-baselines.md``):
expert lesions are 26-connected components of the truth mask with >= 3
voxels; a lesion is *found* when a flagged candidate touches it within one
voxel (26-neighbourhood dilation); a *false positive* is a flagged candidate
component touching no lesion. All arrays share one voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

_S26 = np.ones((3, 3, 3), bool)
#: Lesion size bins by equivalent-sphere diameter (mm): [lo, hi).
SIZE_BINS_MM: tuple[tuple[float, float], ...] = ((0, 5), (5, 10), (10, 20), (20, float("inf")))
#: The size classes of issue 5's bars (2-3, 3-5, 5-10, > 10 mm); the first starts at 0 mm because
#: an expert lesion of 3 voxels can be smaller than 2 mm.
ISSUE_BINS_MM: tuple[tuple[float, float], ...] = ((0, 3), (3, 5), (5, 10), (10, float("inf")))


def expert_lesions(truth: np.ndarray, min_voxels: int = 3) -> tuple[np.ndarray, int]:
    """Label 26-connected components of ``truth > 0`` with >= ``min_voxels`` voxels."""
    lab, n = ndi.label(np.asarray(truth) > 0, structure=_S26)
    if n == 0:
        return lab, 0
    sizes = np.bincount(lab.ravel())
    keep = np.flatnonzero(sizes >= min_voxels)
    keep = keep[keep > 0]
    out = np.zeros_like(lab)
    for new, old in enumerate(keep, start=1):
        out[lab == old] = new
    return out, len(keep)


def candidate_components(flagged: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a flagged mask (any voxel count)."""
    lab, n = ndi.label(np.asarray(flagged) > 0, structure=_S26)
    return lab, int(n)


@dataclass
class LesionScore:
    """Lesion-wise result for one pair (or summed over pairs)."""

    n_lesions: int
    n_found: int
    n_candidates: int
    n_true_candidates: int
    n_false_positives: int
    found_by_bin: dict[str, tuple[int, int]] = field(default_factory=dict)  # bin -> (found, n)
    n_pairs: int = 1
    # per lesion, in the label order of :func:`expert_lesions` (pairs concatenated by ``+``)
    found: tuple[bool, ...] = ()

    @property
    def sensitivity(self) -> float:
        return self.n_found / self.n_lesions if self.n_lesions else float("nan")

    @property
    def precision(self) -> float:
        return self.n_true_candidates / self.n_candidates if self.n_candidates else float("nan")

    @property
    def f1(self) -> float:
        s, p = self.sensitivity, self.precision
        if not self.n_lesions:
            return float("nan")
        if not self.n_candidates or s + p == 0:
            return 0.0
        return 2 * s * p / (s + p)

    @property
    def fp_per_pair(self) -> float:
        return self.n_false_positives / max(self.n_pairs, 1)

    def __add__(self, o: LesionScore) -> LesionScore:
        bins = {k: (self.found_by_bin.get(k, (0, 0))[0] + o.found_by_bin.get(k, (0, 0))[0],
                    self.found_by_bin.get(k, (0, 0))[1] + o.found_by_bin.get(k, (0, 0))[1])
                for k in set(self.found_by_bin) | set(o.found_by_bin)}
        return LesionScore(self.n_lesions + o.n_lesions, self.n_found + o.n_found,
                           self.n_candidates + o.n_candidates,
                           self.n_true_candidates + o.n_true_candidates,
                           self.n_false_positives + o.n_false_positives, bins,
                           self.n_pairs + o.n_pairs, self.found + o.found)

    def as_dict(self) -> dict[str, object]:
        return {"lesions": self.n_lesions, "found": self.n_found, "sensitivity": self.sensitivity,
                "candidates": self.n_candidates, "false_positives": self.n_false_positives,
                "fp_per_pair": self.fp_per_pair, "precision": self.precision, "f1": self.f1,
                "pairs": self.n_pairs,
                "sensitivity_by_size_mm": {k: (f / n if n else None, n)
                                           for k, (f, n) in sorted(self.found_by_bin.items())}}


def _bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"


def score_pair(flagged: np.ndarray, truth: np.ndarray, voxel_volume_mm3: float = 1.0,
               min_voxels: int = 3,
               size_bins_mm: tuple[tuple[float, float], ...] = SIZE_BINS_MM) -> LesionScore:
    """Score a flagged mask (or candidate label map) against a truth change mask.

    ``found_by_bin`` counts lesions by equivalent-sphere diameter (mm, from the
    voxel count x ``voxel_volume_mm3``) in the classes ``size_bins_mm`` ([lo, hi) mm)."""
    lesions, n_les = expert_lesions(truth, min_voxels)
    cands, n_c = candidate_components(flagged)
    near = ndi.binary_dilation(cands > 0, structure=_S26)  # candidates grown by one voxel
    found = np.zeros(n_les + 1, bool)
    if n_les:
        hit = np.unique(lesions[near & (lesions > 0)])
        found[hit] = True
    les_near = ndi.binary_dilation(lesions > 0, structure=_S26)
    true_c = np.unique(cands[les_near & (cands > 0)])
    n_true = int(len(true_c))
    bins: dict[str, tuple[int, int]] = {}
    if n_les:
        sizes = np.bincount(lesions.ravel(), minlength=n_les + 1)[1:] * voxel_volume_mm3
        diam = np.cbrt(6 * sizes / np.pi)
        for lo, hi in size_bins_mm:
            sel = (diam >= lo) & (diam < hi)
            bins[_bin_name(lo, hi)] = (int(found[1:][sel].sum()), int(sel.sum()))
    return LesionScore(n_les, int(found[1:].sum()), n_c, n_true, n_c - n_true, bins,
                       found=tuple(bool(v) for v in found[1:]))


def froc(score_map: np.ndarray, truth: np.ndarray, thresholds: np.ndarray | list[float],
         min_candidate_voxels: int = 1, min_voxels: int = 3
         ) -> list[tuple[float, float, float]]:
    """FROC points (threshold, false positives, sensitivity) for one pair.

    Candidates at each threshold are 26-connected components of
    ``score_map >= threshold`` with at least ``min_candidate_voxels`` voxels.
    """
    out = []
    for t in thresholds:
        lab, n = candidate_components(score_map >= t)
        if min_candidate_voxels > 1 and n:
            sizes = np.bincount(lab.ravel())
            small = np.flatnonzero(sizes < min_candidate_voxels)
            lab[np.isin(lab, small)] = 0
        s = score_pair(lab, truth, min_voxels=min_voxels)
        out.append((float(t), float(s.n_false_positives), s.sensitivity))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (or soft Dice of two fraction maps in [0, 1])."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = a.sum() + b.sum()
    return float(2 * np.minimum(a, b).sum() / den) if den else 1.0
