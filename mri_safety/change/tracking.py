"""Findings across visits: one stable finding ID per abnormality, its volume over time.

Every follow-up of a series is compared with the same baseline image, so the
candidates of all "vs baseline" comparisons of one series live on one grid:
the baseline image's voxel space (label maps ``candidates.nii.gz``) and the
baseline's world RAS+ mm (``centroid_ras_mm``). A candidate seen at M2 and
again at M4 is the same finding when their label maps overlap on that grid
or, without label maps, when their centroids are within ``max_distance_mm``
(or the finding's equivalent-sphere radius, whichever is larger).

Finding IDs are ``<prefix><first visit>-<candidate id at that visit>``, e.g.
``flair-M2-3``: derived only from the inputs, so a re-run with the same inputs
gives the same IDs and a later visit never renames an earlier finding.

>>> import numpy as np
>>> a = {"id": 1, "sign": 1, "flagged": True, "volume_mm3": 30.0,
...      "centroid_ras_mm": [10.0, 0.0, 0.0]}
>>> b = {**a, "volume_mm3": 45.0, "centroid_ras_mm": [11.0, 0.5, 0.0]}
>>> f = track_findings([VisitCandidates("M2", [a]), VisitCandidates("M4", [b])], prefix="t-")
>>> [(x.finding_id, [s.volume_mm3 for s in x.sightings]) for x in f]
[('t-M2-1', [30.0, 45.0])]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass
class VisitCandidates:
    """The candidates of one follow-up visit compared with the baseline.

    ``candidates``: dicts as in ``candidates.json`` (``id``, ``flagged``,
    ``volume_mm3``, ``centroid_ras_mm`` in baseline world RAS+ mm, and ``sign``
    when known). ``labels``: the matching ``candidates.nii.gz`` array (baseline
    voxel space, value = candidate id) or None. Visits are given in time order.
    """

    visit: str
    candidates: list[dict[str, Any]]
    labels: NDArray[np.integer] | None = None


@dataclass
class Sighting:
    """A finding seen at one visit (``candidate_id`` in that visit's candidates.json)."""

    visit: str
    candidate_id: int
    volume_mm3: float
    flagged: bool
    centroid_ras_mm: tuple[float, float, float]


@dataclass
class Finding:
    """One abnormality followed over visits; ``sightings`` in visit order."""

    finding_id: str
    first_visit: str
    sign: int
    sightings: list[Sighting] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"finding_id": self.finding_id, "first_visit": self.first_visit,
                "sign": self.sign,
                "volume_mm3_by_visit": {s.visit: s.volume_mm3 for s in self.sightings},
                "sightings": [{"visit": s.visit, "candidate_id": s.candidate_id,
                               "volume_mm3": s.volume_mm3, "flagged": s.flagged,
                               "centroid_ras_mm": list(s.centroid_ras_mm)}
                              for s in self.sightings]}


def sphere_radius_mm(volume_mm3: float) -> float:
    """Equivalent-sphere radius (mm) of a volume (mm3)."""
    return float(np.cbrt(3.0 * max(volume_mm3, 0.0) / (4.0 * np.pi)))


def _overlaps(prev: NDArray[np.integer], cur: NDArray[np.integer], prev_id: int
              ) -> dict[int, int]:
    """Voxels shared between ``prev == prev_id`` and each label of ``cur``."""
    sel = cur[prev == prev_id]
    ids, counts = np.unique(sel[sel > 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def track_findings(visits: Sequence[VisitCandidates], *, prefix: str = "",
                   max_distance_mm: float = 5.0) -> list[Finding]:
    """Link candidates over visits into findings (see the module docstring).

    A new finding starts only from a ``flagged`` candidate; any candidate of
    the same sign (flagged or not) continues an existing finding, so a
    finding's volume is followed even when it falls below the review
    threshold. Matching is one-to-one per visit, best overlap (or nearest
    centroid) first; ties are broken by candidate id, so the result is
    deterministic. Returns findings ordered by first visit, then candidate id.
    """
    findings: list[Finding] = []
    last: dict[str, tuple[VisitCandidates, dict[str, Any]]] = {}
    for vc in visits:
        pairs: list[tuple[float, int, int]] = []  # (cost, finding index, candidate index)
        for fi, f in enumerate(findings):
            pv, pc = last[f.finding_id]
            use_labels = pv.labels is not None and vc.labels is not None
            shared = (_overlaps(pv.labels, vc.labels, int(pc["id"]))  # type: ignore[arg-type]
                      if use_labels else {})
            for ci, c in enumerate(vc.candidates):
                if int(c.get("sign", 1)) != f.sign:
                    continue
                if use_labels:
                    if shared.get(int(c["id"]), 0):
                        pairs.append((-float(shared[int(c["id"])]), fi, ci))
                    continue
                d = float(np.linalg.norm(np.subtract(c["centroid_ras_mm"],
                                                     pc["centroid_ras_mm"])))
                if d <= max(max_distance_mm, sphere_radius_mm(float(pc["volume_mm3"]))):
                    pairs.append((d, fi, ci))
        pairs.sort()
        used_f: set[int] = set()
        used_c: set[int] = set()
        for _, fi, ci in pairs:
            if fi in used_f or ci in used_c:
                continue
            used_f.add(fi)
            used_c.add(ci)
            c = vc.candidates[ci]
            findings[fi].sightings.append(_sighting(vc.visit, c))
            last[findings[fi].finding_id] = (vc, c)
        new = [c for ci, c in enumerate(vc.candidates) if ci not in used_c and c.get("flagged")]
        for c in sorted(new, key=lambda c: int(c["id"])):
            f = Finding(f"{prefix}{vc.visit}-{int(c['id'])}", vc.visit, int(c.get("sign", 1)),
                        [_sighting(vc.visit, c)])
            findings.append(f)
            last[f.finding_id] = (vc, c)
    return findings


def _sighting(visit: str, c: dict[str, Any]) -> Sighting:
    x, y, z = (float(v) for v in c["centroid_ras_mm"])
    return Sighting(visit, int(c["id"]), float(c["volume_mm3"]), bool(c.get("flagged")),
                    (x, y, z))
