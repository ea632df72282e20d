"""Within-visit partners and volume change in the trial pipeline.

Fast: b-values from sidecars, pairing (b0 not compared, DWI by b-value,
post-contrast T1w as t1ce, ADC / pre-contrast partners, partnered ADC
comparisons dropped, volume-change pair choice), the ventricular-enlargement
candidate and its report rows.

Slow (~3-4 min on 2 shared cores): the third synthetic patient (seed 2): an
acute infarct at 24h (chronic by M2: no longer seen on DWI), then at M2 a mass
and enlarged ventricles. Through the pipeline, with the series each check
needs (baseline: T1w, DWI b0/b1000, ADC, post-contrast T1w; 24h: the DWI
series and ADC; M2: T1w and post-contrast T1w): the volume stage flags
ventricular enlargement in the M2 visit summary and report, the 24h DWI
comparison (with ADC) flags the infarct as new_restricted_diffusion, the M2
t1ce comparison (with pre-contrast T1w) flags the mass as new_enhancement,
and a re-run reuses the volume stage.
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mri_safety.change.volume_finding import ventricular_candidate
from mri_safety.report import build_visit_context, render_visit_report
from pipelines.convert import SeriesReport
from pipelines.multicontrast import (
    drop_partnered_adc,
    dwi_bvalue,
    volume_pairs,
    within_partners,
)
from pipelines.trial import pairs_for

# --------------------------------------------------------------------------
# fast


def test_dwi_bvalue_sources() -> None:
    assert dwi_bvalue({}, "0 1000 1000 1000\n") == 1000.0
    assert dwi_bvalue({"DiffusionBValue": 800}) == 800.0
    assert dwi_bvalue({"SequenceName": "*ep_b0"}) == 0.0
    assert dwi_bvalue({"SequenceName": "*ep_b1000t"}) == 1000.0
    assert dwi_bvalue({"ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]}) == 1000.0
    assert dwi_bvalue({"SequenceName": "tfl3d1"}) is None


def _row(session: str, contrast: str, output: str, post: bool = False, acq: str = "2d",
         region: str = "brain") -> SeriesReport:
    return SeriesReport(key=f"{session}-{output}", source="x", series_number=1, n_instances=1,
                        status="converted", subject="S1", session=session, region=region,
                        contrast=contrast, post_contrast=post, acq=acq, output=output)


def _trial_rows() -> tuple[list[SeriesReport], dict[str, Any], dict[str, float | None]]:
    rows, bvals = [], {}
    for ses in ("baseline", "24h", "M2"):
        rows += [_row(ses, "T1w", f"{ses}_T1w", acq="3d"),
                 _row(ses, "T1w", f"{ses}_ceT1w", post=True, acq="3d"),
                 _row(ses, "DWI", f"{ses}_run-1_dwi"), _row(ses, "DWI", f"{ses}_run-2_dwi"),
                 _row(ses, "ADC", f"{ses}_ADC"), _row(ses, "FLAIR", f"{ses}_FLAIR")]
        bvals[f"{ses}_run-1_dwi"], bvals[f"{ses}_run-2_dwi"] = 0.0, 1000.0
    days = {"baseline": -7, "24h": 1, "M2": 61}
    plans = {r.key: _plan(days[r.session]) for r in rows}
    return rows, plans, bvals


def _plan(days: int | None, study_date: str | None = None) -> SimpleNamespace:
    """A stand-in SeriesPlan: the visit's days from dosing (dosing 2024-03-01) and
    the StudyDate (from ``days`` unless given)."""
    if study_date is None:
        study_date = (date(2024, 3, 1) + timedelta(days=days or 0)).strftime("%Y%m%d")
    return SimpleNamespace(visit=SimpleNamespace(days_from_dosing=days),
                           group=SimpleNamespace(study_date=study_date))


def test_visits_in_study_date_order_without_days_from_dosing() -> None:
    """Without an enrolment row visits carry time-point labels but no days from
    dosing: the previous visit is still the one scanned before (StudyDate), not
    the one whose label sorts before (M12 after M2, not "M12" < "M2")."""
    dates = {"baseline": "20240225", "24h": "20240302", "M2": "20240501",
             "M6": "20240901", "M12": "20250301", "unscheduled1": ""}
    rows = [_row(ses, "FLAIR", f"{ses}_FLAIR") for ses in dates]
    plans = {r.key: _plan(None, dates[r.session]) for r in rows}
    pairs = pairs_for(rows, plans)  # type: ignore[arg-type]
    prev = {p.visit: p.reference_visit for p in pairs if p.kind == "previous"}
    # a visit without a StudyDate goes last: compared with M12 as its previous
    assert prev == {"M2": "24h", "M6": "M2", "M12": "M6", "unscheduled1": "M12"}
    assert {p.visit for p in pairs if p.kind == "baseline"} == set(dates) - {"baseline"}


def test_pairs_partners_and_volume_choice() -> None:
    rows, plans, bvals = _trial_rows()
    pairs = pairs_for(rows, plans, bvals)  # type: ignore[arg-type]
    got = {(p.visit, p.kind, p.contrast, p.followup_name, p.baseline_name) for p in pairs}
    assert ("M2", "baseline", "dwi", "M2_run-2_dwi", "baseline_run-2_dwi") in got
    assert not [p for p in pairs if "run-1" in p.followup_name]  # b0 not compared
    assert ("M2", "baseline", "t1ce", "M2_ceT1w", "baseline_ceT1w") in got
    assert ("M2", "previous", "t1w", "M2_T1w", "24h_T1w") in got
    for p in pairs:
        p.within = within_partners(p, rows)
    dwi = next(p for p in pairs if p.contrast == "dwi" and p.visit == "M2" and p.kind == "previous")
    assert dwi.within == {"adc_baseline": "24h_ADC", "adc_followup": "M2_ADC"}
    ce = next(p for p in pairs if p.contrast == "t1ce" and p.visit == "24h")
    assert ce.within == {"pre_baseline": "baseline_T1w", "pre_followup": "24h_T1w"}
    assert all(p.within == {} for p in pairs if p.contrast in ("t1w", "flair", "adc"))
    kept = drop_partnered_adc(pairs)
    assert not [p for p in kept if p.contrast == "adc"]
    assert len(kept) == len(pairs) - 3  # 24h vs baseline, M2 vs baseline, M2 vs 24h
    vol = volume_pairs(kept)
    assert sorted((p.visit, p.contrast, p.kind) for p in vol.values()) == [
        ("24h", "t1w", "baseline"), ("M2", "t1w", "baseline")]
    # no partner ADC at the follow-up: the DWI pair has none, the ADC pair stays
    rows2 = [r for r in rows if r.output != "M2_ADC"]
    pairs2 = pairs_for(rows2, plans, bvals)  # type: ignore[arg-type]
    for p in pairs2:
        p.within = within_partners(p, rows2)
    d2 = next(p for p in pairs2 if p.contrast == "dwi" and p.visit == "M2" and p.kind == "baseline")
    assert d2.within == {"adc_baseline": "baseline_ADC"}
    # T2w when there is no T1w
    rows3 = [r for r in rows if r.contrast != "T1w"] + [_row(s, "T2w", f"{s}_T2w")
                                                       for s in ("baseline", "M2")]
    p3 = volume_pairs(pairs_for(rows3, plans | {  # type: ignore[arg-type]
        r.key: _plan(0 if r.session == "baseline" else 61) for r in rows3}, bvals))
    assert [(p.visit, p.contrast) for p in p3.values()] == [("M2", "t2w")]


def _volume_summary(enlarged: bool) -> dict[str, Any]:
    vc = {"brain_volume_change_pct": -0.4, "ventricle_volume_change_pct": 22.0 if enlarged
          else 3.0, "ventricle_volume_mm3": 30000.0, "atrophy_allowance_pct": 4.0,
          "ventricle_limit_pct": 14.0, "ventricular_enlargement": enlarged}
    cand = ventricular_candidate(vc, 10.0)
    entry = {"region": "brain", "contrast": "t1w", "reference_visit": "baseline",
             "baseline_name": "sub-X/ses-baseline/anat/b_T1w.nii.gz",
             "followup_name": "sub-X/ses-M2/anat/f_T1w.nii.gz", "error": "", **vc,
             "candidates": [{**cand, "finding_id": "brain-ventricles-vs-baseline"}] if cand
             else []}
    return {"subject": "X", "visit": "M2", "days_from_dosing": 61, "series": [],
            "comparisons": [], "n_flagged": int(enlarged), "not_assessable": [],
            "status": "candidates flagged" if enlarged else "no candidates flagged",
            "volume_change": [entry]}


def test_ventricular_candidate_and_report_rows() -> None:
    assert ventricular_candidate({"ventricle_volume_change_pct": 3.0,
                                  "ventricular_enlargement": False}, 10.0) is None
    s = _volume_summary(True)
    cand = s["volume_change"][0]["candidates"][0]
    # limit = 4 % allowance + 10 % margin; 22 % is 8 % above: logistic(8 / 5)
    assert cand["type"] == "ventricular_enlargement" and cand["flagged"]
    assert cand["score"] == pytest.approx(1 / (1 + np.exp(-8 / 5)), abs=1e-4)
    assert cand["volume_mm3"] == pytest.approx(6600.0)
    ctx = build_visit_context(s)
    assert [x["type"] for x in ctx["flagged"]] == ["ventricular enlargement"]
    rows = {m["quantity"]: m for m in ctx["morphometry"]}
    assert rows["ventricle volume change vs baseline (Jacobian)"]["value"] == "+22.0"
    assert rows["brain volume change vs baseline (Jacobian)"]["value"] == "-0.40"
    html = render_visit_report(ctx)
    assert "ventricular enlargement" in html and "possible hydrocephalus" in html
    assert "montage missing" not in html
    quiet = build_visit_context(_volume_summary(False))
    assert quiet["flagged"] == [] and len(quiet["morphometry"]) == 2


def test_ventricle_margin_candidates_linked_to_flagged_enlargement() -> None:
    """A visit with flagged ventricular enlargement: its brain candidates marked
    ``ventricle_margin`` are unflagged and listed under the finding (n_flagged
    drops by as many); others stay flagged. Without a flagged enlargement they
    are linked to the measurement only while their volume is within the growth
    atrophy explains (14 % of 30 mL = 4200 mm3 here): more may be the only
    sign of growth the Jacobian underestimated, and stays flagged."""
    from pipelines.trial import _link_ventricle_margin

    def comparison(margin_mm3: float = 160.0) -> dict[str, Any]:
        return {"region": "brain", "kind": "baseline", "contrast": "t1w",
                "baseline_name": "b_T1w.nii.gz", "followup_name": "f_T1w.nii.gz",
                "candidates": [
                    {"id": 1, "flagged": True, "ventricle_margin": False, "reasons": [],
                     "volume_mm3": 100.0},
                    {"id": 2, "flagged": True, "ventricle_margin": True, "reasons": [],
                     "volume_mm3": margin_mm3},
                    {"id": 3, "flagged": False, "ventricle_margin": True, "reasons": [],
                     "volume_mm3": 80.0}]}

    s = _volume_summary(True)
    s["comparisons"] = [comparison(margin_mm3=9000.0)]
    s["n_flagged"] += 2
    _link_ventricle_margin(s)
    cands = s["comparisons"][0]["candidates"]
    assert [c["flagged"] for c in cands] == [True, False, False]
    assert cands[1]["linked_to"] == "brain-ventricles-vs-baseline" and "linked_to" not in cands[2]
    assert s["n_flagged"] == 2  # the enlargement and candidate 1
    (finding,) = s["volume_change"][0]["candidates"]
    assert finding["linked_candidates"] == [{"comparison": "f_T1w.nii.gz vs b_T1w.nii.gz",
                                             "kind": "baseline", "candidate_ids": [2]}]
    row = next(r for r in build_visit_context(s)["flagged"]
               if r["type"] == "ventricular enlargement")
    assert "1 candidate(s)" in row["note"] and "f_T1w.nii.gz vs b_T1w.nii.gz: #2" in row["note"]

    quiet = _volume_summary(False)  # ventricles +3 %: within atrophy + margin
    quiet["comparisons"] = [comparison(margin_mm3=160.0)]
    quiet["n_flagged"] = 2
    _link_ventricle_margin(quiet)
    cands = quiet["comparisons"][0]["candidates"]
    assert [c["flagged"] for c in cands] == [True, False, False]
    assert cands[1]["linked_to"] == "brain-ventricles-vs-baseline"
    assert "within the 4200 mm3" in cands[1]["reasons"][-1]
    assert quiet["n_flagged"] == 1
    (entry,) = quiet["volume_change"]
    assert entry["linked_candidates"] == [{"comparison": "f_T1w.nii.gz vs b_T1w.nii.gz",
                                           "kind": "baseline", "candidate_ids": [2]}]
    rows = {m["quantity"]: m for m in build_visit_context(quiet)["morphometry"]}
    note = rows["ventricle volume change vs baseline (Jacobian)"]["note"]
    assert "within what atrophy explains" in note and "f_T1w.nii.gz vs b_T1w.nii.gz: #2" in note

    much = _volume_summary(False)  # 4300 mm3 of new CSF: more than the 4200 allowed
    much["comparisons"] = [comparison(margin_mm3=4300.0)]
    much["n_flagged"] = 2
    _link_ventricle_margin(much)
    assert [c["flagged"] for c in much["comparisons"][0]["candidates"]] == [True, True, False]
    assert much["n_flagged"] == 2 and "linked_candidates" not in much["volume_change"][0]


def test_failed_volume_stage_is_an_entry_with_its_error(tmp_path: Path) -> None:
    """A volume stage that raised is recorded in the visit summary (and shown in
    the report) with the series named; it does not stop the visit."""
    from pipelines.multicontrast import volume_entry
    from pipelines.trial import Pair

    pair = Pair("S1", "M2", "baseline", "baseline", "brain", "t1w",
                "sub-S1/ses-baseline/anat/b_T1w.nii.gz", "sub-S1/ses-M2/anat/f_T1w.nii.gz")
    entry = volume_entry(pair, RuntimeError("demons diverged"), tmp_path)
    assert "f_T1w.nii.gz" in entry["error"] and "demons diverged" in entry["error"]
    assert "candidates" not in entry and "ventricular_enlargement" not in entry
    summary = {**_volume_summary(False), "volume_change": [entry]}
    rows = build_visit_context(summary)["morphometry"]
    assert [(r["value"], r["note"]) for r in rows] == [("failed", "demons diverged")]


# --------------------------------------------------------------------------
# slow: the pipeline on a synthetic patient with enlarged ventricles

SECRET = b"pipeline-test-secret-0123456789"
#: series copied per visit (see the module docstring)
KEEP = {"baseline": ("01_T1w", "05_DWI_b0", "06_DWI_b1000", "07_ADC", "08_T1w_post"),
        "24h": ("05_DWI_b0", "06_DWI_b1000", "07_ADC"), "M2": ("01_T1w", "08_T1w_post")}
# These tests check that the pipeline pairs partners within a visit, not how
# small an infarct it finds (benchmarks/detect_synth.py measures that). The
# infarct must therefore be well above the 4 mm DWI grid's limit: seed 0's
# 7.2 mm infarct (about 2 voxels across) peaked at z 3.86 on one machine and
# above z_seed 4.0 on another. Seed 2 is the first seed whose third patient
# has an infarct of 10 mm or more (11.0 mm); the fixture checks it.
SEED = 2
MIN_INFARCT_MM = 10.0


@pytest.fixture(scope="module")
def trial3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """SYN003 of SEED (24h: acute infarct; M2: mass, ventricles +3-5 mm), the
    series of KEEP per visit; returns the trial folder and the truth."""
    from mri_safety.synth.study import generate_patient

    full = tmp_path_factory.mktemp("synth3")
    truth = generate_patient(full, 2, SEED, "small")
    kinds = {a["kind"]: a for a in truth["abnormalities"]}
    assert sorted(kinds) == ["infarct", "mass", "ventricles"], sorted(kinds)
    assert kinds["infarct"]["diameter_mm"] >= MIN_INFARCT_MM, kinds["infarct"]
    trial = tmp_path_factory.mktemp("trial3")
    for visit, keep in KEEP.items():
        for series in keep:
            src = full / "dicom" / truth["patient_id"] / visit / series
            shutil.copytree(src, trial / "dicom" / truth["patient_id"] / visit / series)
    with open(trial / "enrolment.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("patient_id", "dosing_date"),
                                  (truth["dicom_patient_id"], truth["dosing_date"])])
    return trial, truth


def _run(trial: Path, out: Path) -> Any:
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    with local_cluster(n_workers=2) as c, Client(c) as client:
        return run_trial(trial / "dicom", out, client, secret=SECRET,
                         enrolment=trial / "enrolment.csv")


@pytest.fixture(scope="module")
def run3(trial3: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, Any, dict[str, Any]]:
    out = tmp_path_factory.mktemp("run3") / "out"
    return out, _run(trial3[0], out), trial3[1]


def _visit(out: Path, visit: str) -> dict[str, Any]:
    return json.loads(next((out / "visits").glob(f"*/ses-{visit}/visit_summary.json"))
                      .read_text())


def _m2(out: Path) -> dict[str, Any]:
    return _visit(out, "M2")


def _near(c: dict[str, Any], truth: dict[str, Any], kind: str) -> bool:
    a = next(a for a in truth["abnormalities"] if a["kind"] == kind)
    centre = np.asarray(a["centre_ras_by_visit"]["baseline"])  # baseline scanner RAS mm
    return bool(np.linalg.norm(np.asarray(c["centroid_ras_mm"]) - centre)
                < a["diameter_mm"] / 2 + 4.0)


@pytest.mark.slow
def test_pipeline_volume_change_flags_ventricles(run3: tuple[Path, Any, dict[str, Any]]) -> None:
    out, summary, _ = run3
    assert not summary.failures, summary.failures
    assert summary.computed["volume"] == 1
    doc = _m2(out)
    (vc,) = doc["volume_change"]
    assert vc["contrast"] == "t1w" and vc["error"] == ""
    assert vc["ventricular_enlargement"] is True
    assert vc["ventricle_volume_change_pct"] > vc["atrophy_allowance_pct"] + 10.0
    assert abs(vc["brain_volume_change_pct"]) < 3.0
    (cand,) = vc["candidates"]
    assert cand["type"] == "ventricular_enlargement" and cand["flagged"]
    assert cand["score"] > 0.5
    manifest = json.loads((out / vc["manifest"]).read_text())
    assert manifest["stage"] == "volume" and "jacobian.nii.gz" in manifest["outputs"]
    assert manifest["parameters"]["params"]["ventricle_min_pct"] == 10.0
    n_comp = sum(1 for c in doc["comparisons"] for x in c["candidates"] if x["flagged"])
    assert doc["n_flagged"] == n_comp + 1
    # T1w decreases on tissue that became ventricular CSF are listed under the finding
    t1w = next(c for c in doc["comparisons"] if c["contrast"] == "t1w")
    linked = [x for x in t1w["candidates"] if x.get("linked_to")]
    assert linked and all(not x["flagged"] and x["ventricle_margin"] and x["sign"] == -1
                          and x["linked_to"] == "brain-ventricles-vs-baseline" for x in linked)
    assert cand["linked_candidates"][0]["candidate_ids"] == [x["id"] for x in linked]
    assert not any(x["flagged"] and x.get("ventricle_margin") for c in doc["comparisons"]
                   for x in c["candidates"])
    assert doc["status"] == "candidates flagged"
    html = next((out / "reports").glob("*/ses-M2/report.html")).read_text()
    assert "ventricle volume change vs baseline (Jacobian)" in html
    assert "brain-ventricles-vs-baseline" in html


@pytest.mark.slow
def test_pipeline_pairs_within_visit(run3: tuple[Path, Any, dict[str, Any]]) -> None:
    out, _, truth = run3
    doc = _m2(out)
    comps = {c["contrast"]: c for c in doc["comparisons"]}
    assert sorted(comps) == ["t1ce", "t1w"] and len(doc["comparisons"]) == 2
    day1 = _visit(out, "24h")
    # b0 is not compared, ADC is judged inside the DWI comparison
    assert [c["contrast"] for c in day1["comparisons"]] == ["dwi"]
    comps["dwi"] = day1["comparisons"][0]
    assert "run-2" in comps["dwi"]["followup_name"]
    assert sorted(comps["dwi"]["within"]) == ["adc_baseline", "adc_followup"]
    assert sorted(comps["t1ce"]["within"]) == ["pre_baseline", "pre_followup"]
    dwi = [c for c in comps["dwi"]["candidates"] if c["flagged"]]
    assert any(c["type"] == "new_restricted_diffusion" and "adc" in c["contrasts"]
               and _near(c, truth, "infarct") for c in dwi), comps["dwi"]["candidates"]
    assert all(c["adc"]["ratio_to_tissue"] < 1.0 for c in dwi if "adc" in c)
    enh = [c for c in comps["t1ce"]["candidates"] if c["flagged"]]
    assert any(c["type"] == "new_enhancement" and c.get("method", "").startswith("within")
               and _near(c, truth, "mass") for c in enh), comps["t1ce"]["candidates"]
    stage = (out / comps["t1ce"]["manifest"]).parent
    assert (stage / "enhancement_followup.nii.gz").is_file()
    cj = json.loads((stage / "candidates.json").read_text())
    assert sorted(cj["inputs"]["within_visit"]) == ["pre_baseline", "pre_followup"]
    m = json.loads((out / comps["dwi"]["manifest"]).read_text())
    assert sorted(m["inputs"]) == ["adc_baseline", "adc_followup", "baseline", "followup"]


@pytest.mark.slow
def test_pipeline_rerun_reuses_volume(trial3: tuple[Path, dict[str, Any]],
                                      run3: tuple[Path, Any, dict[str, Any]]) -> None:
    out, _, _ = run3
    before = _m2(out)
    again = _run(trial3[0], out)
    # (detect re-runs too when someone edits mri_safety/change meanwhile: code is in its key)
    assert "volume" not in again.computed and again.reused["volume"] == 1
    assert again.reused["convert"] == 10  # 5 + 3 + 2 series
    assert _m2(out)["volume_change"] == before["volume_change"]
