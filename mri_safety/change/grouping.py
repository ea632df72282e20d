"""One abnormality seen in several series of a visit: group their candidates.

A new lesion is bright on FLAIR and on T2w, so the FLAIR comparison and the
T2w comparison of the same visits each flag it: two candidates (two findings
in :mod:`mri_safety.change.tracking`, which links across visits, one series
at a time). :func:`group_across_series` says which flagged candidates of one
visit's comparisons are the same abnormality, so that a reader sees one entry
with its series listed, and a visit's count of flagged abnormalities counts
it once.

Each comparison's candidates live in its reference visit's world (label maps
on its series' grids, centroids in its world RAS+ mm; the series of one
session share the scanner's frame of reference). Comparisons against
another reference visit (the previous visit instead of baseline) join when
their world is mapped into the shared one (``to_shared``, a 4 x 4 RAS+
matrix: in the pipeline, the previous visit -> this visit -> baseline
through the two rigid registrations of the same follow-up series). Two
flagged candidates of different comparisons are the same abnormality when
their signs agree (the same sign; for two contrasts of known weighting, the
relation of :func:`mri_safety.change.family.agreement_sign`: a new lesion is
FLAIR-bright and T1-dark, a haematoma T2*-dark and T1-bright) and

* their label maps overlap in the shared world (the voxel centres of one,
  mapped through the voxel-to-RAS affines and ``to_shared``, fall on the
  other's label, either way round, so a small candidate on a fine grid is not
  lost between the centres of a coarse one), or, when a label map is missing,
* their centroids (in the shared world) are within ``max_distance_mm`` or
  the larger one's equivalent-sphere radius (the rule of the tracking module).

Grouping is transitive (FLAIR ~ T2w and T2w ~ PD puts all three together),
but a group never holds two candidates of one comparison: the comparison
already separated them. When a candidate of one comparison overlaps two of
another (two FLAIR lesions inside one larger T2w change), it joins the one it
shares most voxels with (else the nearest), and the other stays on its own.

>>> a = SeriesCandidates("flair", [{"id": 1, "flagged": True, "sign": 1,
...     "volume_mm3": 30.0, "centroid_ras_mm": [10.0, 0.0, 0.0]}])
>>> b = SeriesCandidates("t2w", [{"id": 4, "flagged": True, "sign": 1,
...     "volume_mm3": 20.0, "centroid_ras_mm": [11.5, 0.5, 0.0]},
...     {"id": 5, "flagged": True, "sign": 1, "volume_mm3": 20.0,
...      "centroid_ras_mm": [40.0, 0.0, 0.0]}])
>>> group_across_series([a, b])
[[('flair', 1), ('t2w', 4)]]

Across visits, :func:`abnormality_ids` names each group (and each flagged
candidate on its own) by one of its members' finding IDs, so that an
abnormality keeps one ID at every visit although each series tracks it under
its own finding ID (see that function).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mri_safety.change.family import agreement_sign
from mri_safety.change.tracking import sphere_radius_mm


def comparison_key(comparison: Mapping[str, Any]) -> str:
    """How a visit summary names one of its comparisons (``same_abnormality``,
    ``linked_candidates``): ``"<follow-up series> vs <reference series>"``."""
    return f"{comparison.get('followup_name')} vs {comparison.get('baseline_name')}"


@dataclass
class SeriesCandidates:
    """The candidates of one comparison of a visit.

    ``key`` names the comparison (e.g. its follow-up series). ``candidates``:
    dicts as in ``candidates.json`` (``id``, ``flagged``, ``sign``,
    ``volume_mm3``, ``centroid_ras_mm`` in the reference visit's world RAS+ mm).
    ``labels``: the ``candidates.nii.gz`` array (value = candidate id) and
    ``affine`` its voxel -> world RAS+ mm matrix, or both None. ``to_shared``:
    4 x 4 matrix from this world RAS+ mm to the shared world (None: the same).
    ``contrast``: the compared contrast (``flair``, ``t1w``, ...), or None.
    """

    key: str
    candidates: list[dict[str, Any]]
    labels: NDArray[np.integer] | None = None
    affine: NDArray[np.floating] | None = None
    to_shared: NDArray[np.floating] | None = None
    contrast: str | None = None
    #: flagged candidate id -> its voxel centres in the shared world (filled once)
    _points: dict[int, NDArray[np.float64]] | None = field(default=None, init=False,
                                                           repr=False)

    def points(self, cid: int) -> NDArray[np.float64]:
        """Voxel centres (N x 3, shared world RAS+ mm) of flagged candidate ``cid``.
        The label map is read once for all flagged candidates (a 1 mm head is
        16 M voxels; a visit can pair hundreds of candidates)."""
        if self._points is None:
            assert self.labels is not None
            ids = [int(c["id"]) for c in self.candidates if c.get("flagged")]
            sel = np.nonzero(np.isin(self.labels, ids))
            vals = self.labels[sel]
            ijk = np.stack(sel, axis=1).astype(np.float64)
            a = self.shared_from_voxel()
            world = ijk @ a[:3, :3].T + a[:3, 3]
            self._points = {i: world[vals == i] for i in ids}
        return self._points.get(cid, np.empty((0, 3)))

    def shared_from_voxel(self) -> NDArray[np.float64]:
        """4 x 4: voxel index -> shared world RAS+ mm."""
        assert self.affine is not None
        m = np.asarray(self.affine, np.float64)
        return m if self.to_shared is None else np.asarray(self.to_shared, np.float64) @ m

    def centroid(self, c: dict[str, Any]) -> NDArray[np.float64]:
        """A candidate's centroid in the shared world RAS+ mm."""
        p = np.asarray(c["centroid_ras_mm"], np.float64)
        if self.to_shared is None:
            return p
        t = np.asarray(self.to_shared, np.float64)
        return np.asarray(t[:3, :3] @ p + t[:3, 3], np.float64)


def _hits(src: SeriesCandidates, cid: int, dst: SeriesCandidates) -> dict[int, int]:
    """Voxel centres of candidate ``cid`` of ``src`` on each label of ``dst``."""
    assert dst.labels is not None
    world = src.points(cid)
    if not len(world):
        return {}
    inv = np.linalg.inv(dst.shared_from_voxel())
    to = np.rint(world @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    shape = np.array(dst.labels.shape[:3])
    ok = np.all((to >= 0) & (to < shape), axis=1)
    vals = dst.labels[tuple(to[ok].T)]
    ids, n = np.unique(vals[vals > 0], return_counts=True)
    return {int(i): int(k) for i, k in zip(ids, n, strict=True)}


def _link(a: SeriesCandidates, ca: dict[str, Any], b: SeriesCandidates, cb: dict[str, Any],
          max_distance_mm: float) -> float | None:
    """How strongly two candidates are one abnormality (larger = stronger), or None:
    shared voxel centres both ways round, or minus the centroid distance (mm)."""
    rel = agreement_sign(a.contrast, b.contrast) if a.contrast and b.contrast else None
    if int(ca.get("sign", 1)) * int(cb.get("sign", 1)) != (rel or 1):
        return None
    if all(x.labels is not None and x.affine is not None for x in (a, b)):
        pa, pb = a.points(int(ca["id"])), b.points(int(cb["id"]))
        if not len(pa) or not len(pb):
            return None
        # boxes apart by more than the coarser voxel diagonal cannot share a voxel
        gap = float(np.sqrt(3.0)) * max(float(np.abs(x.shared_from_voxel()[:3, :3]).sum(0).max())
                                        for x in (a, b))
        if np.any(pa.min(0) > pb.max(0) + gap) or np.any(pb.min(0) > pa.max(0) + gap):
            return None
        n = (_hits(a, int(ca["id"]), b).get(int(cb["id"]), 0)
             + _hits(b, int(cb["id"]), a).get(int(ca["id"]), 0))
        return float(n) if n else None
    d = float(np.linalg.norm(a.centroid(ca) - b.centroid(cb)))
    r = max(sphere_radius_mm(float(ca["volume_mm3"])),
            sphere_radius_mm(float(cb["volume_mm3"])))
    return -d if d <= max(max_distance_mm, r) else None


def group_across_series(series: Sequence[SeriesCandidates], *, max_distance_mm: float = 5.0
                        ) -> list[list[tuple[str, int]]]:
    """Groups of two or more flagged candidates that are one abnormality (see the
    module docstring), as ``(key, candidate id)`` lists. Pairs are joined
    strongest link first (most shared voxels, else nearest centroids), and never
    so that a group holds two candidates of one comparison. Members are sorted by the
    order of ``series`` then candidate id; groups by their first member, so the
    result depends only on the inputs."""
    nodes = [(si, int(c["id"])) for si, s in enumerate(series)
             for c in s.candidates if c.get("flagged")]
    by = {(si, int(c["id"])): c for si, s in enumerate(series) for c in s.candidates}
    links: list[tuple[float, tuple[int, int], tuple[int, int]]] = []
    for x, y in combinations(nodes, 2):
        if x[0] != y[0]:
            w = _link(series[x[0]], by[x], series[y[0]], by[y], max_distance_mm)
            if w is not None:
                links.append((-w, x, y))
    parent = {n: n for n in nodes}
    members = {n: {n[0]} for n in nodes}  # series indices per group root

    def root(n: tuple[int, int]) -> tuple[int, int]:
        while parent[n] != n:
            n = parent[n]
        return n

    for _, x, y in sorted(links):
        rx, ry = root(x), root(y)
        if rx != ry and not members[rx] & members[ry]:
            keep, gone = min(rx, ry), max(rx, ry)
            parent[gone] = keep
            members[keep] |= members.pop(gone)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for n in nodes:
        groups.setdefault(root(n), []).append(n)
    return [[(series[si].key, cid) for si, cid in sorted(g)]
            for _, g in sorted(groups.items()) if len(g) > 1]


@dataclass
class AbnormalityName:
    """The ID :func:`abnormality_ids` gives one abnormality at one visit.

    ``abnormality_id``: its ID; ``merged``: the IDs of earlier visits' other
    abnormalities that this group also holds (two findings that were apart and
    are now one region), oldest first."""

    abnormality_id: str
    merged: list[str] = field(default_factory=list)


def abnormality_ids(visits: Sequence[Sequence[Sequence[tuple[str, str | None]]]]
                    ) -> list[list[AbnormalityName]]:
    """One ID per abnormality, kept from visit to visit.

    ``visits``: one subject's visits in time order; each a list of
    abnormalities (the groups of :func:`group_across_series` and every other
    flagged candidate on its own), each a list of its members as ``(label,
    finding_id)``: ``label`` names the candidate within its visit (unique
    there), ``finding_id`` is its tracked finding across visits
    (:mod:`mri_safety.change.tracking`) or None (not tracked: a "vs previous"
    comparison).

    An abnormality takes the ID an earlier visit gave one of its members'
    findings (the oldest, when it holds several); a new one takes its
    smallest tracked finding ID (all of them first seen at this visit),
    else its smallest label. A finding keeps the first ID it was given, so
    later visits never rename an earlier visit's abnormality and the IDs
    depend only on the inputs.

    >>> m2 = [[("flair c1", "brain-flair-M2-1"), ("t2w c3", "brain-t2w-M2-3")]]
    >>> m4 = [[("t2w c1", "brain-t2w-M2-3")],            # only T2w flags it now
    ...       [("flair c2", "brain-flair-M4-2")]]         # a new one
    >>> m6 = [[("flair c1", "brain-flair-M4-2"),          # the new one has grown
    ...        ("t2w c2", "brain-t2w-M2-3")]]             # into the first
    >>> [[(a.abnormality_id, a.merged) for a in v] for v in abnormality_ids([m2, m4, m6])]
    [[('brain-flair-M2-1', [])], [('brain-flair-M2-1', []), ('brain-flair-M4-2', [])], \
[('brain-flair-M2-1', ['brain-flair-M4-2'])]]
    """
    owner: dict[str, str] = {}  # tracked finding id -> abnormality id
    since: dict[str, int] = {}  # abnormality id -> index of the visit that named it
    out: list[list[AbnormalityName]] = []
    for vi, groups in enumerate(visits):
        names: list[AbnormalityName] = []
        for g in groups:
            known = sorted({owner[f] for _, f in g if f is not None and f in owner},
                           key=lambda a: (since[a], a))
            if known:
                aid = known[0]
            else:
                tracked = sorted(f for _, f in g if f is not None)
                aid = tracked[0] if tracked else min(label for label, _ in g)
                since.setdefault(aid, vi)
            for _, f in g:
                if f is not None:
                    owner.setdefault(f, aid)
            names.append(AbnormalityName(aid, known[1:]))
        out.append(names)
    return out
