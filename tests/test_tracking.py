"""Findings across visits keep one stable ID (mri_safety.change.tracking)."""

from __future__ import annotations

from typing import Any

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



# --- one abnormality in several series of a visit (mri_safety.change.grouping) ---

def _series(key: str, shape: tuple[int, int, int], spacing: tuple[float, float, float],
            origin: tuple[float, float, float],
            blobs: list[tuple[int, tuple[float, float, float], float, bool, int]]) -> Any:
    """A comparison's candidates on its own grid: blobs are (id, world RAS centre mm,
    radius mm, flagged, sign); the label map and voxel -> RAS affine come with it."""
    from mri_safety.change.grouping import SeriesCandidates

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    world = np.indices(shape).reshape(3, -1).T * np.array(spacing) + np.array(origin)
    lab = np.zeros(shape, np.int32)
    cands = []
    for cid, c, r, flagged, sign in blobs:
        m = (np.linalg.norm(world - np.array(c), axis=1) <= r).reshape(shape)
        lab[m] = cid
        cands.append({"id": cid, "flagged": flagged, "sign": sign,
                      "volume_mm3": float(m.sum() * np.prod(spacing)),
                      "centroid_ras_mm": [float(v) for v in c]})
    return SeriesCandidates(key, cands, lab, affine)


def test_one_lesion_in_two_series_on_different_grids_is_one_group() -> None:
    from mri_safety.change.grouping import group_across_series

    # FLAIR on 1 mm voxels, T2w on 2 x 2 x 4 mm with another origin (same world)
    flair = _series("flair", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    [(1, (20.0, 20.0, 20.0), 4.0, True, 1),   # the lesion, both series
                     (2, (40.0, 40.0, 20.0), 3.0, True, 1),   # FLAIR only
                     (3, (20.0, 40.0, 40.0), 3.0, True, -1),  # a decrease on FLAIR ...
                     (4, (45.0, 20.0, 40.0), 3.0, False, 1)])  # unflagged on FLAIR
    t2w = _series("t2w", (30, 30, 15), (2.0, 2.0, 4.0), (1.0, -1.0, 2.0),
                  [(7, (22.0, 21.0, 22.0), 5.0, True, 1),
                   (8, (20.0, 40.0, 40.0), 5.0, True, 1),    # ... an increase on T2w
                   (9, (45.0, 20.0, 40.0), 5.0, True, 1),
                   (10, (40.0, 10.0, 50.0), 3.0, True, 1)])
    assert group_across_series([flair, t2w]) == [[("flair", 1), ("t2w", 7)]]
    # centroids alone (no label maps) give the same, and so does the other order
    for s in (flair, t2w):
        s.labels = s.affine = None
    assert group_across_series([flair, t2w]) == [[("flair", 1), ("t2w", 7)]]
    assert group_across_series([t2w, flair]) == [[("t2w", 7), ("flair", 1)]]


def test_small_candidate_between_coarse_voxel_centres_and_three_series() -> None:
    from mri_safety.change.grouping import group_across_series

    # a 1.2 mm candidate on 0.5 mm voxels between the 4 mm slice centres (z 2, 6 mm) of
    # a coarse candidate of one slice: no coarse voxel centre falls on it, but its
    # voxel centres fall on the coarse label
    fine = _series("pd", (40, 40, 40), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0),
                   [(1, (10.0, 10.0, 4.0), 1.2, True, 1)])
    coarse = _series("t2w", (10, 10, 3), (2.0, 2.0, 4.0), (0.0, 0.0, 2.0),
                     [(5, (10.0, 10.0, 2.0), 1.9, True, 1)])
    assert int((coarse.labels > 0).sum()) == 1  # one voxel, centre (10, 10, 2) mm
    assert group_across_series([coarse, fine]) == [[("t2w", 5), ("pd", 1)]]
    # transitive: a third series touching only the fine one joins the group
    flair = _series("flair", (40, 40, 40), (0.5, 0.5, 0.5), (0.3, 0.0, 0.0),
                    [(2, (11.0, 10.0, 4.0), 0.8, True, 1),
                     (3, (11.0, 10.0, 12.0), 2.0, True, 1)])  # not on either: alone
    assert group_across_series([flair, coarse, fine]) == [
        [("flair", 2), ("t2w", 5), ("pd", 1)]]


def test_one_large_candidate_over_two_of_another_series_joins_the_larger_overlap() -> None:
    from mri_safety.change.grouping import group_across_series

    # T2w sees one change where FLAIR separated two lesions: it joins the FLAIR
    # candidate it shares most voxels with; the other FLAIR lesion stays on its own
    flair = _series("flair", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    [(1, (20.0, 30.0, 30.0), 2.5, True, 1),
                     (2, (32.0, 30.0, 30.0), 4.0, True, 1)])
    t2w = _series("t2w", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                  [(5, (27.0, 30.0, 30.0), 8.0, True, 1)])
    assert group_across_series([flair, t2w]) == [[("flair", 2), ("t2w", 5)]]
    for s in (flair, t2w):  # by centroids: the nearer one
        s.labels = s.affine = None
    assert group_across_series([flair, t2w]) == [[("flair", 2), ("t2w", 5)]]


def test_abnormality_ids_are_kept_across_series_and_visits() -> None:
    """A lesion tracked by FLAIR and T2w under two finding IDs keeps one abnormality
    ID over visits, whichever series flags it; a new one takes its own; when two
    meet, the older ID wins and the other is listed as merged; a later visit never
    renames an earlier one; an untracked candidate is named by its label."""
    from mri_safety.change.grouping import abnormality_ids

    visits = [
        # M2: the lesion on both series; a FLAIR-only one; a vs-previous-only one
        [[("t2w c3", "t2w-M2-3"), ("flair c1", "flair-M2-1")], [("flair c2", "flair-M2-2")],
         [("t2w vs 24h c1", None)]],
        # M4: T2w alone flags the lesion; a T2w change next to it is not (yet) part of it
        [[("t2w c1", "t2w-M2-3")], [("t2w c4", "t2w-M4-4")]],
        # M6: FLAIR (still flair-M2-1) sees the lesion grown into the second one
        [[("flair c1", "flair-M2-1"), ("flair-vs-M4 c2", None), ("t2w c1", "t2w-M4-4")],
         [("flair c2", "flair-M2-2")]],
    ]
    got = [[(a.abnormality_id, a.merged) for a in v] for v in abnormality_ids(visits)]
    assert got == [
        [("flair-M2-1", []), ("flair-M2-2", []), ("t2w vs 24h c1", [])],
        [("flair-M2-1", []), ("t2w-M4-4", [])],
        [("flair-M2-1", ["t2w-M4-4"]), ("flair-M2-2", [])],
    ]
    # the IDs of the first k visits do not depend on later visits; the same inputs
    # give the same IDs
    for k in range(1, len(visits)):
        assert abnormality_ids(visits[:k]) == abnormality_ids(visits)[:k]
    assert abnormality_ids(visits) == abnormality_ids(visits)


def test_signs_of_two_contrasts_agree_by_their_weighting() -> None:
    """A new lesion is FLAIR-bright and T1-dark: one abnormality; a T1-bright change
    on a FLAIR-bright one is not (blood products are T1-bright and T2-dark), nor are
    a FLAIR decrease and a T2w increase. Without contrasts: the same sign only."""
    from mri_safety.change.grouping import group_across_series

    flair = _series("flair", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                    [(1, (20.0, 20.0, 20.0), 4.0, True, 1),
                     (2, (40.0, 40.0, 20.0), 4.0, True, 1),
                     (3, (20.0, 40.0, 40.0), 4.0, True, -1)])
    t1w = _series("t1w", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                  [(5, (21.0, 20.0, 20.0), 3.0, True, -1),   # the lesion: dark on T1w
                   (6, (40.0, 41.0, 20.0), 3.0, True, 1)])   # bright on both: not one
    t2w = _series("t2w", (60, 60, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                  [(7, (20.0, 40.0, 41.0), 3.0, True, 1)])   # up on T2w, down on FLAIR
    assert group_across_series([flair, t1w, t2w]) == [[("flair", 2), ("t1w", 6)]]
    for s, c in ((flair, "flair"), (t1w, "t1w"), (t2w, "t2w")):
        s.contrast = c
    assert group_across_series([flair, t1w, t2w]) == [[("flair", 1), ("t1w", 5)]]
