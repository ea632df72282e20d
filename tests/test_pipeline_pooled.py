"""The pipeline pools each FLAIR comparison with the T2w comparison of the same
visits (and the reverse), and gives each T1w comparison those two as extra
contrasts, as ``mri-safety compare --extra-contrast`` does (docs/detection.md
"Pooling FLAIR and T2w", docs/pipeline.md)."""

from __future__ import annotations

import json

import pytest
from conftest import small_synthetic_trial

SECRET = b"pipeline-pooled-secret-0123456789"


def test_pool_partners_pairs_flair_and_t2w_of_the_same_visits() -> None:
    from pipelines.trial import Pair, detect_groups, extra_partners, pool_partners

    def pair(visit: str, ref: str, contrast: str, region: str = "brain") -> Pair:
        return Pair("S1", visit, ref, "baseline" if ref == "baseline" else "previous", region,
                    contrast, f"{ref}_{contrast}", f"{visit}_{contrast}")

    pairs = [pair("24h", "baseline", "flair"), pair("24h", "baseline", "t2w"),
             pair("M2", "baseline", "flair"), pair("M2", "24h", "flair"),
             pair("M2", "24h", "t2w"), pair("M2", "baseline", "t1w"),
             pair("M2", "baseline", "t2w", region="spine"), pair("M2", "24h", "t1w"),
             pair("24h", "baseline", "t1w", region="spine")]
    # M2 vs baseline FLAIR has no brain T2w partner (only a spine one): alone
    assert pool_partners(pairs) == {0: 1, 1: 0, 3: 4, 4: 3}
    # T1w takes the FLAIR and T2w comparisons of its visits (those that exist), never
    # across regions
    assert extra_partners(pairs) == {0: [1], 1: [0], 3: [4], 4: [3], 5: [2], 7: [3, 4]}
    # the detections sharing z-maps run in one task each, the T1w one last
    assert detect_groups(extra_partners(pairs), len(pairs)) == [[0, 1], [2, 5], [3, 4, 7], [6],
                                                               [8]]


def test_visit_groups_one_lesion_flagged_in_flair_and_t2w(tmp_path) -> None:
    """The visit summary names a lesion flagged by the FLAIR and the T2w comparison
    as one abnormality; the FLAIR-only candidate stays alone. The T2w comparison
    with the previous visit (its own world: the head moved) joins through the
    two registrations of its follow-up series, and stays alone without them."""
    import copy

    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from pipelines.trial import _group_across_series, _name_abnormalities

    def comparison(contrast: str, kind: str, spacing: float, blobs: list[tuple[int, float]],
                   shift_lps: tuple[float, float, float] | None = None) -> dict:
        """blobs: (candidate id, x of a 6 mm ball at y = z = 20 mm world RAS of the
        reference visit); ``shift_lps``: the register stage's reference -> follow-up
        translation (LPS mm)."""
        d = tmp_path / f"{contrast}-{kind}"
        d.mkdir()
        aff = np.diag([spacing, spacing, spacing, 1.0])
        shape = (int(60 / spacing),) * 3
        world = np.indices(shape).reshape(3, -1).T * spacing
        lab = np.zeros(shape, np.int16)
        cands = []
        for cid, x in blobs:
            lab[(np.linalg.norm(world - [x, 20, 20], axis=1) <= 3).reshape(shape)] = cid
            cands.append({"id": cid, "flagged": True, "sign": 1, "volume_mm3": 113.0,
                          "centroid_ras_mm": [x, 20.0, 20.0]})
            if kind == "baseline":  # tracked (vs-previous candidates are not)
                cands[-1]["finding_id"] = f"brain-{contrast}-M2-{cid}"
        nib.save(nib.Nifti1Image(lab, aff), str(d / "candidates.nii.gz"))
        (d / "manifest.json").write_text("{}")
        reg = None
        if shift_lps is not None:
            (d / "reg").mkdir()
            sitk.WriteTransform(sitk.TranslationTransform(3, shift_lps),
                                str(d / "reg" / "transform.tfm"))
            reg = f"{d.name}/reg/manifest.json"
        return {"kind": kind, "region": "brain", "contrast": contrast,
                "reference_visit": "baseline" if kind == "baseline" else "24h",
                "followup_name": f"M2_{contrast}",
                "baseline_name": f"{kind}_{contrast}", "manifest": f"{d.name}/manifest.json",
                "register_manifest": reg, "candidates": cands}

    # previous -> M2 moves +4 mm LPS x, baseline -> M2 -6 mm: previous x = 30 mm RAS is
    # baseline x = 20 mm RAS, where the FLAIR and T2w lesion is
    v0 = {"comparisons": [comparison("flair", "baseline", 1.0, [(1, 20.0), (2, 45.0)]),
                          comparison("t2w", "baseline", 2.0, [(3, 21.0)], (-6.0, 0.0, 0.0)),
                          comparison("t2w", "previous", 2.0, [(1, 30.0)], (4.0, 0.0, 0.0))],
          "n_flagged": 4, "days_from_dosing": 60, "visit_index": 1,
          "findings": [{"finding_id": f} for f in ("brain-flair-M2-1", "brain-flair-M2-2",
                                                    "brain-t2w-M2-3")]}
    v = copy.deepcopy(v0)
    _group_across_series(v, tmp_path)
    _name_abnormalities({("S1", "M2"): v})
    flair, t2w, prev = (c["candidates"] for c in v["comparisons"])
    assert flair[0]["same_abnormality"] == [
        {"comparison": "M2_t2w vs baseline_t2w", "candidate_id": 3,
         "finding_id": "brain-t2w-M2-3"},
        {"comparison": "M2_t2w vs previous_t2w", "candidate_id": 1, "finding_id": None}]
    assert [o["finding_id"] for o in prev[0]["same_abnormality"]] == [
        "brain-flair-M2-1", "brain-t2w-M2-3"]
    assert "same_abnormality" not in flair[1]
    assert v["n_flagged_abnormalities"] == 2
    # one ID per abnormality: the group's smallest finding ID, on each member
    assert [x["abnormality_id"] for x in (flair[0], t2w[0], prev[0], flair[1])] == [
        "brain-flair-M2-1", "brain-flair-M2-1", "brain-flair-M2-1", "brain-flair-M2-2"]
    assert [(a["abnormality_id"], len(a["members"])) for a in v["abnormalities"]] == [
        ("brain-flair-M2-1", 3), ("brain-flair-M2-2", 1)]
    assert [f.get("same_abnormality") for f in v["findings"]] == [
        ["brain-t2w-M2-3"], None, ["brain-flair-M2-1"]]
    # without the previous comparison's registration its world is unknown: alone
    v = copy.deepcopy(v0)
    v["comparisons"][2]["register_manifest"] = None
    _group_across_series(v, tmp_path)
    _name_abnormalities({("S1", "M2"): v})
    assert "same_abnormality" not in v["comparisons"][2]["candidates"][0]
    assert v["n_flagged_abnormalities"] == 3
    # not tracked and alone: named by its own label (report.context.finding_id)
    assert v["comparisons"][2]["candidates"][0]["abnormality_id"] == "brain-t2w-vs-24h-c1"


def test_spine_lesion_vs_previous_joins_vs_baseline_through_a_bspline(tmp_path) -> None:
    """The spine's register stage gives rigid + B-spline transforms (a neck bend), which
    have no matrix: the "vs previous" candidate is mapped to the baseline world through
    an affine fitted to inverse(baseline -> M2) o (previous -> M2) at its own points
    (pipelines.trial._previous_to_baseline), and joins the "vs baseline" one."""
    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.register.transforms import map_points_ras
    from pipelines.trial import _group_across_series, _name_abnormalities

    # baseline -> M2: a smooth bend of up to 10 mm along x, then a rotation
    ref = sitk.Image([30, 30, 30], sitk.sitkFloat32)
    ref.SetSpacing([2.0, 2.0, 2.0])
    ref.SetOrigin([-60.0, -60.0, 0.0])
    bend = sitk.BSplineTransformInitializer(ref, [3, 3, 3])
    n = len(bend.GetParameters()) // 3
    k = np.arange(n) // 36  # control point index along z (6 x 6 per slice)
    bend.SetParameters(np.concatenate([10.0 * np.sin(np.pi * k / 5), np.zeros(2 * n)]).tolist())
    to_m2 = sitk.CompositeTransform([sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, 0.15), bend])
    prev_to_m2 = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))  # previous -> M2 (LPS)
    at_base = np.array([[10.0, 20.0, 22.0]])  # the lesion, baseline world RAS
    at_m2 = map_points_ras(to_m2, at_base)
    at_prev = at_m2 - [-4.0, 3.0, 2.0]  # RAS of the LPS translation's inverse
    rigid_only = map_points_ras(to_m2.GetNthTransform(0), at_base)
    assert np.linalg.norm(rigid_only - at_m2) > 8  # the bend matters here (3 mm balls)

    def comparison(kind: str, centre: np.ndarray, tfm: sitk.Transform) -> dict:
        d = tmp_path / kind
        (d / "reg").mkdir(parents=True)
        shape = (60, 60, 60)
        world = np.indices(shape).reshape(3, -1).T + [-30.0, -10.0, -8.0]
        lab = (np.linalg.norm(world - centre, axis=1) <= 3).reshape(shape).astype(np.int16)
        aff = np.eye(4)
        aff[:3, 3] = [-30.0, -10.0, -8.0]
        nib.save(nib.Nifti1Image(lab, aff), str(d / "candidates.nii.gz"))
        sitk.WriteTransform(tfm, str(d / "reg" / "transform.tfm"))
        cand = {"id": 1, "flagged": True, "sign": 1, "volume_mm3": 113.0,
                "centroid_ras_mm": [float(v) for v in centre]}
        if kind == "baseline":
            cand["finding_id"] = "spine-t2w-M2-1"
        return {"kind": kind, "region": "spine", "contrast": "t2w",
                "reference_visit": "baseline" if kind == "baseline" else "24h",
                "followup_name": "M2_t2w", "baseline_name": f"{kind}_t2w",
                "manifest": f"{kind}/manifest.json", "register_manifest": f"{kind}/reg/m.json",
                "candidates": [cand]}

    v = {"comparisons": [comparison("baseline", at_base[0], to_m2),
                         comparison("previous", at_prev[0], prev_to_m2)],
         "n_flagged": 2, "days_from_dosing": 60, "visit_index": 1,
         "findings": []}
    _group_across_series(v, tmp_path)
    _name_abnormalities({("S1", "M2"): v})
    assert v["comparisons"][1]["candidates"][0]["same_abnormality"] == [
        {"comparison": "M2_t2w vs baseline_t2w", "candidate_id": 1,
         "finding_id": "spine-t2w-M2-1"}]
    assert v["n_flagged_abnormalities"] == 1
    assert [x["candidates"][0]["abnormality_id"] for x in v["comparisons"]] == [
        "spine-t2w-M2-1"] * 2


@pytest.mark.slow
def test_pipeline_pools_flair_and_t2w_like_compare(tmp_path_factory, tmp_path) -> None:
    """Each detect stage equals ``mri-safety compare`` with the same extra contrasts:
    FLAIR pooled with T2w and the reverse, T1w with FLAIR and T2w as extras."""
    from distributed import Client

    from mri_safety.change.compare import compare_main
    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    trial = small_synthetic_trial(tmp_path_factory, ("01_T1w", "02_FLAIR", "03_T2w"))
    out = tmp_path / "out"
    with local_cluster(n_workers=2) as c, Client(c) as client:
        summary = run_trial(trial / "dicom", out, client, secret=SECRET,
                            enrolment=trial / "enrolment.csv")
    assert not summary.failures
    comps = [c for v in sorted((out / "visits").glob("*/ses-*/visit_summary.json"))
             for c in json.loads(v.read_text())["comparisons"]]
    assert len(comps) == 9  # 24h: 1 per series; M2: vs baseline and vs 24h
    # one abnormality flagged in several comparisons of M2 is grouped (docs/detection.md
    # "Findings across visits"): a lesion new at M2 is flagged by FLAIR and T2w, against
    # baseline and against 24h, and those four candidates (and T1w, below) are one group
    m2 = json.loads(next((out / "visits").glob("*/ses-M2/visit_summary.json")).read_text())
    flagged = {(f"{c['followup_name']} vs {c['baseline_name']}", x["id"]): x
               for c in m2["comparisons"] for x in c.get("candidates") or [] if x["flagged"]}
    groups = {frozenset([k, *((o["comparison"], o["candidate_id"])
                              for o in x["same_abnormality"])])
              for k, x in flagged.items() if x.get("same_abnormality")}
    for g in groups:  # symmetric, one candidate per comparison
        assert len({k for k, _ in g}) == len(g)
        for k in g:
            assert {(o["comparison"], o["candidate_id"])
                    for o in flagged[k]["same_abnormality"]} == g - {k}
    assert m2["n_flagged_abnormalities"] == m2["n_flagged"] - sum(len(g) - 1 for g in groups)
    # one abnormality ID per group, shared by its members; one entry per abnormality
    aid = {k: x["abnormality_id"] for k, x in flagged.items()}
    for g in groups:
        assert len({aid[k] for k in g}) == 1
    aid.update({(e["followup_name"], x["id"]): x["abnormality_id"]
                for e in m2.get("volume_change", []) for x in e.get("candidates", [])
                if x.get("flagged")})
    assert sorted(a["abnormality_id"] for a in m2["abnormalities"]) == sorted(set(aid.values()))
    assert len(set(aid.values())) == m2["n_flagged_abnormalities"]
    def what(key: str) -> tuple[str, str]:  # (series, reference visit) of a comparison
        fu, ref = key.split(" vs ")
        return fu.rsplit("_", 1)[-1], ref.split("/")[1]

    # ... and it is dark on T1w: FLAIR/T2w increases and T1w decreases agree (one group)
    want = {(c, r) for c in ("FLAIR.nii.gz", "T2w.nii.gz", "T1w.nii.gz")
            for r in ("ses-baseline", "ses-24h")}
    six = [g for g in groups if {what(k) for k, _ in g} >= want]
    assert six, groups
    wanted = {"flair": ["t2w"], "t2w": ["flair"], "t1w": ["flair", "t2w"]}
    for comp in comps:
        doc = json.loads(((out / comp["manifest"]).parent / "candidates.json").read_text())
        exs = doc["parameters"]["extra_contrasts"]
        assert [e["contrast"] for e in exs] == wanted[comp["contrast"]]
        assert [e["contrast"] for e in doc["inputs"]["extra"]] == wanted[comp["contrast"]]
        for e in exs:  # pooled within the T2 family only
            assert ("pooled_rho" in e) == (comp["contrast"] != "t1w")
    # the M2-vs-baseline stages give what compare gives with the other series' pairs as
    # extra contrasts (one thread, as the pipeline's tasks); the T2w stage runs second in
    # the pool's task with both z-maps taken from the FLAIR stage's computation
    by = {c["contrast"]: c for c in comps if c["visit"] == "M2" and c["kind"] == "baseline"}
    for contrast, others in wanted.items():
        mine = by[contrast]
        cmp = tmp_path / f"cmp-{contrast}"
        doc = compare_main(out / "bids" / mine["baseline_name"],
                           out / "bids" / mine["followup_name"], cmp,
                           region="brain", contrast=contrast,
                           extra=[(out / "bids" / by[o]["baseline_name"],
                                   out / "bids" / by[o]["followup_name"], o) for o in others],
                           threads=1)
        assert doc["parameters"]["registration_threads"] == 1
        stage_dir = (out / mine["manifest"]).parent
        staged = json.loads((stage_dir / "candidates.json").read_text())
        assert staged["candidates"] == doc["candidates"]
        for name in ("candidates.nii.gz", "zmap.nii.gz"):
            assert (cmp / name).read_bytes() == (stage_dir / name).read_bytes(), name


@pytest.mark.slow
def test_grouped_detections_compute_each_zmap_once(tmp_path_factory, tmp_path,
                                                   monkeypatch) -> None:
    """The FLAIR, T2w and T1w detections of the same visits, run in one task,
    compute 3 z-maps, not 7 (FLAIR and T2w take each other's, T1w takes both),
    and write the same outputs as when each runs alone."""
    from distributed import Client

    import mri_safety.change.compare as compare
    from pipelines.cache import StageResult
    from pipelines.trial import _run_detect, _run_detect_group, run_trial

    trial = small_synthetic_trial(tmp_path_factory, ("01_T1w", "02_FLAIR", "03_T2w"))
    out = tmp_path / "out"
    with Client(processes=False, n_workers=1, threads_per_worker=1,
                dashboard_address=None) as client:
        assert not run_trial(trial / "dicom", out, client, secret=SECRET,
                             enrolment=trial / "enrolment.csv").failures
    comps = {(c["visit"], c["kind"], c["contrast"]): c
             for v in sorted((out / "visits").glob("*/ses-*/visit_summary.json"))
             for c in json.loads(v.read_text())["comparisons"]}
    work, bids = out / "work", out / "bids"

    def reg_of(contrast: str) -> StageResult:
        man = json.loads((out / comps[("24h", "baseline", contrast)]["manifest"]).read_text())
        d = man["upstream"]["register"]
        return StageResult("register", d, work / "register" / d, False)

    def kw(contrast: str, others: tuple[str, ...]) -> dict:
        mine = comps[("24h", "baseline", contrast)]
        man = json.loads((out / mine["manifest"]).read_text())
        extras = [(reg_of(o), bids / comps[("24h", "baseline", o)]["baseline_name"],
                   bids / comps[("24h", "baseline", o)]["followup_name"], o) for o in others]
        return {"reg": reg_of(contrast), "baseline": bids / mine["baseline_name"],
                "followup": bids / mine["followup_name"], "region": "brain",
                "contrast": contrast, "detection": man["parameters"]["detection"],
                "threads": 1, "partners": {}, "extras": extras}

    group = [("flair", ("t2w",)), ("t2w", ("flair",)), ("t1w", ("flair", "t2w"))]
    calls = []
    real = compare.z_registered
    monkeypatch.setattr(compare, "z_registered",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    together = _run_detect_group(str(tmp_path / "fresh"), *(kw(c, o) for c, o in group))
    assert len(calls) == 3 and all(r.computed for r in together)  # type: ignore[union-attr]
    calls.clear()
    alone = [_run_detect(str(tmp_path / "alone"), **kw(c, o)) for c, o in group]
    assert len(calls) == 7
    for a, b in zip(together, alone, strict=True):
        assert a.digest == b.digest  # type: ignore[union-attr]
        for name in ("candidates.json", "candidates.nii.gz", "zmap.nii.gz"):
            assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name  # type: ignore[union-attr]


def test_evidence_montage_of_new_fluid_shows_the_fluid_map(tmp_path) -> None:
    """A ``new_fluid_space`` candidate's montage shows ``zmap_fluid`` (where the pooled
    z-map cancels, here 0 everywhere): its difference row has the red focus; the same
    candidate typed as a T2 hyperintensity shows the pooled map, and no focus."""
    import matplotlib.image as mpimg
    import nibabel as nib
    import numpy as np

    from pipelines.trial import evidence_stage

    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = -20.0
    g = np.indices((40, 40, 40))
    focus = ((g - 20) ** 2).sum(0) <= 16
    img = np.where(((g - 20) ** 2).sum(0) <= 18 ** 2, 100.0, 0.0)
    paths = {}
    for name, a in (("baseline", img), ("followup_in_baseline", img + 150.0 * focus),
                    ("zmap", np.zeros(img.shape)), ("zmap_fluid", 12.0 * focus)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(a.astype(np.float32), aff), str(paths[name]))
    cand = {"id": 1, "centroid_ras_mm": [0.0, 0.0, 0.0], "volume_mm3": 257.0,
            "location": {"region": "brain"}, "score": 1.0}
    compared = ("sub-01_ses-baseline_T2w.nii.gz", "sub-01_ses-M2_T2w.nii.gz")

    def red_pixels(ctype: str) -> int:
        out = tmp_path / ctype
        doc = evidence_stage(paths, out, [{**cand, "type": ctype}], compared)
        png = mpimg.imread(str(out / doc["montages"][0]))
        r, gr, b = png[..., 0], png[..., 1], png[..., 2]
        return int(((r > 0.4) & (gr < 0.15) & (b < 0.2)).sum())

    fluid, pooled = red_pixels("new_fluid_space"), red_pixels("new_t2_hyperintensity")
    assert fluid > pooled + 500, (fluid, pooled)  # the colour bar's red is in both
