"""Findings across visits keep one stable ID (mri_safety.change.tracking)."""

from __future__ import annotations

import numpy as np

from mri_safety.change.tracking import VisitCandidates, track_findings

SHAPE = (40, 40, 40)


def _ball(centre: tuple[int, int, int], r: float) -> np.ndarray:
    g = np.indices(SHAPE).astype(float)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= r * r  # type: ignore[no-any-return]


def _visit(name: str, blobs: list[tuple[int, tuple[int, int, int], float, bool, int]]
           ) -> VisitCandidates:
    """blobs: (candidate id, centre voxel, radius, flagged, sign); 1 mm voxels, world = voxel."""
    lab = np.zeros(SHAPE, np.int32)
    cands = []
    for cid, c, r, flagged, sign in blobs:
        m = _ball(c, r)
        lab[m] = cid
        cands.append({"id": cid, "flagged": flagged, "sign": sign, "volume_mm3": float(m.sum()),
                      "centroid_ras_mm": [float(v) for v in np.argwhere(m).mean(0)]})
    return VisitCandidates(name, cands, lab)


def test_growing_finding_keeps_its_id_and_new_one_gets_a_new_id() -> None:
    m2 = _visit("M2", [(1, (10, 10, 10), 3, True, 1)])
    # at M4 the same lesion has grown and moved 1 voxel; a new one appears; ranks swap
    m4 = _visit("M4", [(1, (30, 30, 30), 2, True, 1), (2, (11, 10, 10), 4, True, 1)])
    m6 = _visit("M6", [(1, (11, 10, 10), 5, True, 1), (2, (30, 30, 30), 2, False, 1)])
    f = track_findings([m2, m4, m6], prefix="flair-")
    assert [x.finding_id for x in f] == ["flair-M2-1", "flair-M4-1"]
    grow = f[0].as_dict()
    assert [s["candidate_id"] for s in grow["sightings"]] == [1, 2, 1]
    vols = list(grow["volume_mm3_by_visit"].values())
    assert vols == sorted(vols) and vols[0] < vols[-1]
    # the second finding is followed at M6 although below the review threshold there
    assert [(s.visit, s.flagged) for s in f[1].sightings] == [("M4", True), ("M6", False)]


def test_opposite_sign_and_unflagged_do_not_start_or_join_findings() -> None:
    m2 = _visit("M2", [(1, (10, 10, 10), 3, True, 1), (2, (30, 30, 30), 3, False, 1)])
    m4 = _visit("M4", [(1, (10, 10, 10), 3, True, -1)])
    f = track_findings([m2, m4])
    assert [x.finding_id for x in f] == ["M2-1", "M4-1"]
    assert [x.sign for x in f] == [1, -1]
    assert len(f[0].sightings) == 1


def test_centroid_matching_without_label_maps_and_determinism() -> None:
    visits = [_visit("M2", [(1, (10, 10, 10), 3, True, 1), (2, (20, 10, 10), 3, True, 1)]),
              _visit("M4", [(1, (19, 10, 10), 3, True, 1), (2, (11, 11, 10), 3, True, 1)])]
    for v in visits:
        v.labels = None
    a = [x.as_dict() for x in track_findings(visits)]
    b = [x.as_dict() for x in track_findings(visits)]
    assert a == b
    assert [[s["candidate_id"] for s in x["sightings"]] for x in a] == [[1, 2], [2, 1]]
    # far away (> 5 mm and > radius): a new finding, not a continuation
    far = [_visit("M2", [(1, (5, 5, 5), 2, True, 1)]), _visit("M4", [(1, (15, 5, 5), 2, True, 1)])]
    for v in far:
        v.labels = None
    assert [x.finding_id for x in track_findings(far)] == ["M2-1", "M4-1"]

