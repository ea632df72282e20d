"""Ventricular enlargement as a candidate finding of a visit.

:func:`mri_safety.change.jacobian.volume_change` measures brain and ventricle
volume change of a follow-up against its baseline (Jacobian determinant of a
coarse deformable step). Ventricles growing beyond what atrophy explains
(``ventricle % > ex_vacuo_factor x brain loss % + ventricle_min_pct``) are a
possible hydrocephalus: a finding to review, like a candidate lesion. This
module turns the measured figures into a candidate entry with the keys of
the lesion candidates that a visit summary and report need (``type``,
``flagged``, ``score``, ``reasons``, ``location``, ``volume_mm3``).

Score (0..1, 0.5 at the reporting limit, as for lesion candidates)::

    score = 1 / (1 + exp(-(ventricle_pct - limit_pct) / SCORE_SCALE_PCT))

with ``limit_pct = atrophy allowance + ventricle_min_pct`` and
``SCORE_SCALE_PCT`` = 5 %: 5 % above the limit scores 0.73, 10 % above 0.88.

Enlarged ventricles also show in the per-contrast difference maps: tissue
at the ventricle margin that became CSF is darker on T1w and FLAIR and
brighter on T2w, and each such rim gives a candidate. They are true changes,
but one finding (the ventricular system), not many.
:func:`new_ventricular_csf` marks the voxels that are ventricular CSF at
follow-up and not at baseline (the ventricle rule of
:func:`mri_safety.morphometry.volumes.ventricle_mask` applied to each visit on
the baseline grid), contiguous with the baseline ventricles;
:mod:`mri_safety.change.compare` records, per candidate of the CSF-gain sign,
whether most of it lies there (``ventricle_margin``). CSF is CSF on every
contrast: where another contrast of the pair changed the other way
(:func:`csf_contradicted`, e.g. a mass bright on both T2w and FLAIR beside
grown ventricles) the voxels are not new CSF, and a candidate holding such a
piece of candidate size (:func:`largest_piece`) is not marked. A T1w
comparison has no second contrast in the pipeline, so this check cannot help
it.
:func:`link_ventricle_margin` then attaches those candidates to the
ventricle measurement of the same visit: they are listed under it and no
longer flagged one by one.

* With flagged ventricular enlargement they are part of that finding.
* Without it, the ventricles grew no more than atrophy explains (by the
  Jacobian), and the candidates are linked as expected change only when their
  own volume agrees: all of them together hold no more CSF than the growth
  the rule allows, ``limit_pct / 100 x baseline ventricle volume``
  (:func:`explained_growth_mm3`). The Jacobian underestimates sharp growth, so
  candidates holding more than that may be the only sign of enlargement: they
  stay flagged. ALS causes atrophy, and partial volume at the ventricle edge
  of thick, re-angled slices looks the same way; neither is a safety finding.

>>> cands = [{"id": 3, "flagged": True, "ventricle_margin": True, "reasons": [],
...            "volume_mm3": 160.0},
...          {"id": 4, "flagged": True, "ventricle_margin": False, "reasons": []}]
>>> link_ventricle_margin(cands, "brain-ventricles-vs-baseline")
[3]
>>> [(c["flagged"], c.get("linked_to")) for c in cands]
[(False, 'brain-ventricles-vs-baseline'), (True, None)]

Within the atrophy allowance (limit 10 % of 25 mL = 2500 mm3): 160 mm3 is
explained, 3000 mm3 is not.

>>> vc = {"ventricle_volume_change_pct": 0.4, "ventricle_limit_pct": 10.0,
...       "ventricle_volume_mm3": 25000.0, "ventricular_enlargement": False}
>>> explained_growth_mm3(vc)
2500.0
>>> c = [{"id": 5, "flagged": True, "ventricle_margin": True, "volume_mm3": 160.0}]
>>> link_ventricle_margin(c, "brain-ventricles-vs-baseline", explained_growth_mm3(vc))
[5]
>>> c = [{"id": 6, "flagged": True, "ventricle_margin": True, "volume_mm3": 3000.0}]
>>> link_ventricle_margin(c, "brain-ventricles-vs-baseline", explained_growth_mm3(vc))
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from mri_safety.morphometry.volumes import ventricle_mask

#: percent of ventricle growth per logistic unit of the score
SCORE_SCALE_PCT = 5.0
#: sign of the change where tissue becomes CSF, per contrast (CSF dark on T1w and FLAIR,
#: bright on T2w); other contrasts get no ventricle-margin test
CSF_GAIN_SIGN: dict[str, int] = {"t1w": -1, "flair": -1, "t2w": 1}
#: share of a candidate's voxels on new ventricular CSF (grown by one voxel) that makes it a
#: ventricle-margin candidate: most of it, so that a lesion merely touching the rim is not
MARGIN_FRACTION = 0.5


def new_ventricular_csf(base: NDArray[np.floating], fu: NDArray[np.floating],
                        brain: NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                        contrast: str) -> NDArray[np.bool_]:
    """Voxels that are ventricular CSF at follow-up but not at baseline.

    ``base``, ``fu``: baseline and follow-up intensities on the baseline grid
    (any scale: the ventricle rule takes its level from each image's own
    brain core); ``brain``: baseline brain mask (parenchyma + ventricles);
    ``spacing_mm``: voxel edges in array axis order; ``contrast``: a key of
    :data:`CSF_GAIN_SIGN`. Returns a bool array of the same shape (all False
    for an empty brain mask), grown by one voxel (26-neighbourhood) to take
    in the partial-volumed rim and the smoothing of the z-map. Only growth
    contiguous with the baseline ventricles counts: a new CSF-like island in
    the central brain (a cyst, a lesion or mass as dark or bright as CSF on
    this contrast) is not ventricular enlargement.

    >>> b = np.ones((40, 40, 40)); b[16:24, 16:24, 16:24] = 0.1
    >>> f = b.copy(); f[14:26, 16:24, 16:24] = 0.1   # ventricle grown by 2 voxels
    >>> m = np.zeros(b.shape, bool); m[4:36, 4:36, 4:36] = True
    >>> grown = new_ventricular_csf(b, f, m, (1.0, 1.0, 1.0), "t1w")
    >>> bool(grown[14, 20, 20]), bool(grown[20, 20, 20]), bool(grown[10, 20, 20])
    (True, False, False)
    >>> f[17:23, 17:23, 26:29] = 0.1                  # a CSF-like island, apart
    >>> bool(new_ventricular_csf(b, f, m, (1.0, 1.0, 1.0), "t1w")[20, 20, 27])
    False
    """
    if contrast not in CSF_GAIN_SIGN:
        raise ValueError(f"no ventricle rule for contrast {contrast!r}")
    brain = np.asarray(brain, bool)
    if not brain.any():
        return np.zeros(brain.shape, bool)
    csf = "dark" if CSF_GAIN_SIGN[contrast] < 0 else "bright"
    vb = ventricle_mask(base, brain, spacing_mm, csf)  # type: ignore[arg-type]
    vf = ventricle_mask(fu, brain, spacing_mm, csf)  # type: ignore[arg-type]
    # growth of the ventricles is contiguous with them: a CSF-like island that does not
    # touch the baseline ventricles is something new (cyst, lesion, mass), not enlargement
    box = np.ones((3, 3, 3), bool)
    lab, _ = ndi.label(vf & ~vb, structure=box)
    touching = np.unique(lab[ndi.binary_dilation(vb, structure=box) & (lab > 0)])
    return np.asarray(ndi.binary_dilation(np.isin(lab, touching), structure=box))


def margin_fraction(voxels: NDArray[np.int64], grown: NDArray[np.bool_]) -> float:
    """Share (0..1) of a candidate's voxels (flat indices into ``grown``) that
    lie on new ventricular CSF (:func:`new_ventricular_csf`)."""
    if voxels.size == 0:
        return 0.0
    return float(np.asarray(grown.ravel()[voxels], bool).mean())


def csf_contradicted(extra_z: dict[str, NDArray[np.floating]], limit_z: float
                     ) -> NDArray[np.bool_] | None:
    """Voxels where another contrast changed the way CSF cannot.

    ``extra_z``: signed z-maps of other contrasts of the same visits on the
    main grid, keyed by contrast; only those with a ventricle rule
    (:data:`CSF_GAIN_SIGN`) are used. A voxel is contradicted when a
    contrast's z is at least ``limit_z`` in the direction opposite to CSF
    gain (brighter on FLAIR or T1w, darker on T2w): tissue that became CSF
    does that on no contrast, a mass or lesion bright on both T2w and FLAIR
    does. Returns None when no contrast has a rule.

    >>> z = {"flair": np.array([3.0, -4.0, 0.5]), "adc": np.array([9.0, 9.0, 9.0])}
    >>> csf_contradicted(z, 2.0).tolist()
    [True, False, False]
    """
    out: NDArray[np.bool_] | None = None
    for name, z in extra_z.items():
        if name in CSF_GAIN_SIGN:
            against = np.asarray(z) * CSF_GAIN_SIGN[name] <= -limit_z
            out = against if out is None else out | against
    return out


def largest_piece(voxels: NDArray[np.int64], mask: NDArray[np.bool_],
                  z: NDArray[np.floating], spacing_mm: tuple[float, float, float]
                  ) -> tuple[float, float]:
    """Largest part of a candidate inside ``mask``.

    ``voxels``: the candidate's flat indices into ``mask`` (bool) and ``z``
    (its signed z-map); ``spacing_mm``: voxel edges in array axis order.
    Returns (volume mm3, peak |z|) of the largest 26-connected piece of the
    candidate inside ``mask``, (0, 0) when there is none. With ``mask`` the
    voxels that another contrast says are not CSF (:func:`csf_contradicted`),
    it is what a lesion or mass merged with the ventricles' rim into one
    component would be on its own.

    >>> mask = np.zeros((6, 6, 6), bool); mask[:, :, :3] = True
    >>> z = np.full(mask.shape, 5.0)
    >>> vox = np.flatnonzero(np.ones(mask.shape, bool))
    >>> largest_piece(vox, mask, z, (1.0, 1.0, 2.0))
    (216.0, 5.0)
    """
    part = np.zeros(mask.shape, bool)
    part.ravel()[voxels] = True
    part &= np.asarray(mask, bool)
    lab, n = ndi.label(part, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return 0.0, 0.0
    sizes = np.bincount(lab.ravel())[1:]
    big = lab == int(np.argmax(sizes)) + 1
    return (float(sizes.max() * np.prod(spacing_mm)),
            float(np.abs(np.asarray(z)[big]).max()))


def explained_growth_mm3(vc: Mapping[str, Any]) -> float | None:
    """Ventricular growth (mm3) that the atrophy rule allows without a finding:
    ``ventricle_limit_pct / 100 x ventricle_volume_mm3`` (baseline ventricles),
    from :meth:`mri_safety.change.jacobian.VolumeChange.as_dict`. None when
    no ventricle change was measured or the limit is not recorded."""
    limit, vol = vc.get("ventricle_limit_pct"), vc.get("ventricle_volume_mm3")
    if vc.get("ventricle_volume_change_pct") is None or limit is None or vol is None:
        return None
    return float(limit) / 100.0 * float(vol)


def link_ventricle_margin(candidates: list[dict[str, Any]], finding_id: str,
                          explained_mm3: float | None = None) -> list[int]:
    """Attach the flagged ``ventricle_margin`` candidates to the visit's
    ventricle measurement ``finding_id``: each gets ``flagged`` False,
    ``linked_to`` the finding and a reason. Changes ``candidates`` in place;
    returns the ids linked, in list order.

    ``explained_mm3`` None: the ventricular-enlargement finding is flagged and
    every margin candidate is part of it. A number (:func:`explained_growth_mm3`,
    enlargement not flagged): the candidates are linked, as change that atrophy
    explains, only when their volumes sum to at most that; otherwise none is
    (more new CSF than the rule allows: they may be the only sign of growth the
    Jacobian underestimated)."""
    margin = [c for c in candidates if c.get("flagged") and c.get("ventricle_margin")]
    if explained_mm3 is None:
        why = (f"on tissue that became ventricular CSF: part of the ventricular-enlargement "
               f"finding {finding_id}, listed under it instead of flagged on its own")
    else:
        total = sum(float(c.get("volume_mm3") or 0.0) for c in margin)
        if total > explained_mm3:
            return []
        why = (f"on tissue that became ventricular CSF, {total:.0f} mm3 with the comparison's "
               f"other such candidates, within the {explained_mm3:.0f} mm3 of ventricular "
               f"growth that atrophy explains ({finding_id}, not enlarged): expected change, "
               "listed under it instead of flagged")
    for c in margin:
        c["flagged"] = False
        c["linked_to"] = finding_id
        c.setdefault("reasons", []).append(why)
    return [int(c["id"]) for c in margin]


def ventricular_candidate(vc: dict[str, Any], ventricle_min_pct: float) -> dict[str, Any] | None:
    """Candidate entry for a ventricular-enlargement result, or None.

    ``vc``: :meth:`mri_safety.change.jacobian.VolumeChange.as_dict` (percent
    changes follow-up vs baseline, ``atrophy_allowance_pct``,
    ``ventricular_enlargement``); ``ventricle_min_pct``: the margin of
    :class:`~mri_safety.change.jacobian.VolumeChangeParams`. Returns None when
    no ventricle change was measured or enlargement is not flagged (the
    figures stay in the visit summary); otherwise a flagged entry with
    ``id`` 1, ``type`` ``ventricular_enlargement``, ``score``, ``volume_mm3``
    (ventricular volume gained, mm3, from the baseline ventricle volume) and
    ``reasons``. No voxel position: the finding is the whole ventricular system.
    """
    pct = vc.get("ventricle_volume_change_pct")
    if pct is None or not vc.get("ventricular_enlargement"):
        return None
    brain = float(vc.get("brain_volume_change_pct", 0.0))
    allowance = float(vc.get("atrophy_allowance_pct", 0.0))
    limit = allowance + float(ventricle_min_pct)
    score = 1.0 / (1.0 + math.exp(-(float(pct) - limit) / SCORE_SCALE_PCT))
    gained = float(vc.get("ventricle_volume_mm3", 0.0)) * float(pct) / 100.0
    return {
        "id": 1, "type": "ventricular_enlargement", "flagged": True,
        "score": round(score, 4), "volume_mm3": round(gained, 1),
        "ventricle_volume_change_pct": round(float(pct), 2),
        "brain_volume_change_pct": round(brain, 2),
        "location": {"region": "brain", "tissue": "ventricles"},
        "contrasts": [], "sign": 1,
        "reasons": [
            f"ventricles {float(pct):+.1f}% vs baseline, brain {brain:+.2f}%: more than the "
            f"{limit:.1f}% that atrophy explains (10 x brain loss + {ventricle_min_pct:g}%): "
            "possible hydrocephalus",
            "Jacobian of a coarse deformable registration (mri_safety.change.jacobian); "
            "the smooth field underestimates sharp growth",
        ],
    }
