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
"""

from __future__ import annotations

import math
from typing import Any

#: percent of ventricle growth per logistic unit of the score
SCORE_SCALE_PCT = 5.0


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
