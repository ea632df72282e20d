"""What a T2w increase in a FLUID space is: CSF, not a new lesion.

Free fluid (CSF in the sulci, cisterns and ventricles) is the brightest thing on
a T2-weighted or proton-density image and dark on FLAIR, whose inversion pulse
nulls it. Its T2w signal between two visits varies with CSF flow (pulsation in
the cisterns and the fourth ventricle) and with the partial volume of thick
slices at other slice positions, so a T2w comparison finds increases there
that FLAIR does not show as lesions. A new lesion (oedema, demyelination,
infarct, tumour) is bright on FLAIR as well as on T2w.

Measured on the real longitudinal-ms visits through the pipeline (2026-12-06,
docs/detection.md, method step 7, "T2w increases in fluid"): the T2w
comparison, pooled with FLAIR, flagged 9 candidates per visit, of which 5 and 4
lay on no expert lesion and away from every FLAIR candidate; looked at, each
was CSF (sulci, cisterns, the fourth ventricle, a frontal horn, the
interhemispheric fissure), dark on FLAIR at both visits.

:func:`fluid_at_both_visits` tells such a candidate: its mean normalised FLAIR
(tissue median = 1) is below ``1 / hyper_ratio`` (darker than normal tissue by
the lesion-likeness ratio, the mirror of the lesion-like rule) at baseline AND
at follow-up (:mod:`mri_safety.change.compare` still keeps a candidate of
which a part of candidate size is FLAIR-hyperintense at follow-up: a mass
merged with a cistern). A space that was tissue at baseline and is fluid at follow-up (a
new cyst, tissue lost to enlarged ventricles) is not covered: it is a change,
and stays a candidate. Extra-axial collections keep their own rule in
:mod:`mri_safety.change.compare` (they are findings, and CSF-like on FLAIR
only when they are pure CSF).

NEW fluid where there was tissue (a cyst, a cavity, necrosis) is the opposite
case, and pooling hides it: T2w rises and FLAIR falls, so the pooled lesion map
``(z_T2w + z_FLAIR) / sqrt(2 + 2 rho)`` of :func:`mri_safety.change.zmap.combine_z`
cancels (a new 6-10 mm cyst in deep white matter of a synthetic follow-up, z
14-25 on each contrast alone, left no pooled candidate at all; measured
2026-12-06, docs/detection.md, method step 7). :func:`fluid_z` is the contrast
of the two maps, standard normal under the null like the pooled map, and
:func:`new_fluid` the voxels where it may count: tissue on FLAIR at baseline,
dark on FLAIR and bright on T2w at follow-up. Widening of a CSF space
(atrophy, enlarged ventricles) has the same signature at its edge;
:func:`widened_space` tells it: the new fluid is continuous with a baseline
fluid space larger than itself and lies wholly within the reach of a tissue
shift of it (the ``dipole_mm`` of misregistration, or one voxel).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

#: contrasts on which free fluid is bright (FLAIR nulls it): their increases are
#: checked against a FLAIR pair of the same visits when there is one
FLUID_BRIGHT = frozenset({"t2w", "pd"})


def fluid_at_both_visits(flair_base: NDArray[np.floating], flair_fu: NDArray[np.floating],
                         defined: NDArray[np.bool_], voxels: NDArray[np.integer],
                         hyper_ratio: float) -> tuple[float, float] | None:
    """Whether a candidate lies in a space that is fluid at both visits.

    ``flair_base`` / ``flair_fu``: the FLAIR baseline and follow-up of the same
    visits, each normalised (its tissue median = 1), on the candidate's grid;
    ``defined``: where that FLAIR pair covers the grid; ``voxels``: flat indices of
    the candidate. Returns ``(baseline mean, follow-up mean)`` over the part of
    the candidate FLAIR covers, when that is at least half of it (a cistern at the
    edge of the FLAIR's search region is still judged) and both are below
    ``1 / hyper_ratio``; else None.

    >>> b = np.array([0.3, 0.4, 1.0]); f = np.array([0.5, 0.6, 1.3])
    >>> ok = np.ones(3, bool)
    >>> fluid_at_both_visits(b, f, ok, np.array([0, 1]), 1.2)
    (0.35, 0.55)
    >>> fluid_at_both_visits(b, f, ok, np.array([1, 2]), 1.2) is None  # tissue turned bright
    True
    >>> fluid_at_both_visits(b, f, np.array([True, False, False]), np.array([0, 1]), 1.2)
    (0.3, 0.5)
    """
    covered = voxels[np.asarray(defined).ravel()[voxels]]
    if voxels.size == 0 or 2 * covered.size < voxels.size:
        return None
    mb = float(np.asarray(flair_base).ravel()[covered].mean())
    mf = float(np.asarray(flair_fu).ravel()[covered].mean())
    level = 1.0 / hyper_ratio
    return (round(mb, 3), round(mf, 3)) if mb < level and mf < level else None


def fluid_z(z_main: NDArray[np.floating], z_flair: NDArray[np.floating],
            defined: NDArray[np.bool_], rho: float) -> NDArray[np.float32]:
    """The fluid map: ``(z_main - z_flair) / sqrt(2 - 2 rho)`` where the FLAIR
    map is ``defined``, 0 elsewhere.

    ``z_main``: the z-map of a fluid-bright contrast (T2w, PD); ``z_flair``: the
    FLAIR z-map of the same visits on the same grid; ``rho``: their correlation
    in unchanged tissue (:func:`mri_safety.change.zmap.combine_z`, clipped at 0).
    Under the null each map is standard normal, so the difference over its SD
    is too: the review threshold of the pooled map applies. Positive where T2w
    rose and FLAIR fell together (fluid appearing), where the pooled map is
    near 0.

    >>> z = np.array([5.0, 5.0, 0.0]); zf = np.array([-5.0, 5.0, 1.0])
    >>> [round(float(v), 3) for v in fluid_z(z, zf, np.array([True, True, False]), 0.0)]
    [7.071, 0.0, 0.0]
    """
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"fluid_z: correlation {rho} outside [0, 1)")
    d = (np.asarray(z_main, np.float32) - np.asarray(z_flair, np.float32)) / np.sqrt(2 - 2 * rho)
    return np.where(np.asarray(defined, bool), d, 0.0).astype(np.float32)


def new_fluid(flair_base: NDArray[np.floating], flair_fu: NDArray[np.floating],
              defined: NDArray[np.bool_], bright_now: NDArray[np.bool_],
              hyper_ratio: float) -> NDArray[np.bool_]:
    """Voxels that were tissue and are fluid now: normalised FLAIR (tissue median
    = 1) at least ``1 / hyper_ratio`` at baseline and below it at follow-up,
    where the FLAIR pair is ``defined``, and bright on the fluid-bright contrast at
    follow-up (``bright_now``: its lesion-like level, which free fluid passes and
    blood products, dark on T2w and FLAIR alike, do not). Same level as
    :func:`fluid_at_both_visits`; no new constant.

    >>> fb = np.array([1.0, 1.0, 0.5, 1.0]); ff = np.array([0.3, 0.3, 0.3, 1.4])
    >>> new_fluid(fb, ff, np.ones(4, bool), np.array([True, False, True, True]), 1.2).tolist()
    [True, False, False, False]
    """
    level = 1.0 / hyper_ratio
    return (np.asarray(defined, bool) & np.asarray(bright_now, bool)
            & (np.asarray(flair_base) >= level) & (np.asarray(flair_fu) < level))


def baseline_fluid_spaces(flair_base: NDArray[np.floating], defined: NDArray[np.bool_],
                          region: NDArray[np.bool_], hyper_ratio: float
                          ) -> tuple[NDArray[np.int32], NDArray[np.int64]]:
    """26-connected spaces that are fluid on the baseline FLAIR (below
    ``1 / hyper_ratio``, inside ``region`` where FLAIR is ``defined``): the
    label map and the voxel count of each label (index 0 unused)."""
    fl = np.asarray(defined, bool) & np.asarray(region, bool) & (np.asarray(flair_base)
                                                                  < 1.0 / hyper_ratio)
    lab, n = ndi.label(fl, structure=np.ones((3, 3, 3), bool))
    return lab.astype(np.int32), np.bincount(lab.ravel(), minlength=n + 1).astype(np.int64)


def widened_space(voxels: NDArray[np.integer], spaces: NDArray[np.int32],
                  sizes: NDArray[np.int64], reach: NDArray[np.bool_]) -> int:
    """Voxel count of the largest baseline fluid space (:func:`baseline_fluid_spaces`)
    that a new-fluid candidate (``voxels``: flat indices into ``spaces``) touches
    (26-neighbourhood), when that space is larger than the candidate and the
    candidate lies wholly in ``reach`` (the baseline fluid grown by the distance
    a tissue shift moves an edge): the candidate is then the widening of a
    sulcus, cistern or ventricle, not a new cyst in tissue; 0 otherwise. A few
    dark voxels of white matter next to a cyst are smaller than it, and a cyst
    that opens onto a ventricle reaches beyond the shift distance; neither
    counts. Works in the candidate's box, not the whole grid.

    >>> sp = np.zeros((12, 5, 5), bool); sp[:6] = True; sp[9, 2, 2] = True
    >>> lab, n = baseline_fluid_spaces(np.where(sp, 0.2, 1.0), np.ones(sp.shape, bool),
    ...                                np.ones(sp.shape, bool), 1.2)
    >>> layer = np.zeros(sp.shape, bool); layer[6] = True     # on the 150-voxel space
    >>> reach = np.zeros(sp.shape, bool); reach[:8] = True
    >>> widened_space(np.flatnonzero(layer), lab, n, reach)
    150
    >>> deep = np.zeros(sp.shape, bool); deep[6:9] = True     # reaches beyond a shift
    >>> widened_space(np.flatnonzero(deep), lab, n, reach)
    0
    >>> cyst = np.zeros(sp.shape, bool); cyst[10, 2, 2] = True  # beside one dark voxel
    >>> widened_space(np.flatnonzero(cyst), lab, n, np.ones(sp.shape, bool))
    0
    """
    vox = np.asarray(voxels)
    if not bool(np.asarray(reach).ravel()[vox].all()):
        return 0
    # the candidate's box, one voxel wider (clipped at the grid edge, as the
    # dilation of the whole grid would be)
    ijk = np.array(np.unravel_index(vox, spaces.shape))
    lo = np.maximum(ijk.min(axis=1) - 1, 0)
    hi = np.minimum(ijk.max(axis=1) + 2, spaces.shape)
    m3 = np.zeros(tuple(int(n) for n in hi - lo), bool)
    m3[tuple(ijk - lo[:, None])] = True
    ring = ndi.binary_dilation(m3, structure=np.ones((3, 3, 3), bool)) & ~m3
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    touched = np.unique(spaces[box][ring])
    touched = touched[touched > 0]
    if not touched.size:
        return 0
    big = int(sizes[touched].max())
    return big if big > int(vox.size) else 0
