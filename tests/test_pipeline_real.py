"""The whole pipeline (`mri-safety run`) on real scanner DICOM.

Three real 2D sagittal T1 studies of one volunteer (patient-positions HFS, HFP,
HFDL: 4.8 mm slices, the same head in three positions, so nothing new) become
baseline, 24 h and M2 of a trial patient through visit overrides by
StudyInstanceUID. The trial folder is a tree of symbolic links to the shared
data, as exports are often assembled; a link back up the tree must not loop.
Before 2026-12-05 the links were not followed (the run found nothing and said
"0 visits, 0 failures") and the volume stage raised on slices thicker than its
2 mm grid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import need_data

from mri_safety.evaluation.dicom_trials import positions_trial

pytestmark = pytest.mark.slow

SECRET = b"real-pipeline-test-secret-012345"


def _run(dicom: Path, out: Path, enrolment: Path | None):
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    with local_cluster(n_workers=2) as c, Client(c) as client:
        return run_trial(dicom, out, client, secret=SECRET, enrolment=enrolment)


def _followups(out: Path) -> list[dict[str, Any]]:
    """The visit summaries of the follow-up visits."""
    docs = [json.loads(p.read_text())
            for p in sorted((out / "visits").glob("*/ses-*/visit_summary.json"))]
    return [v for v in docs if v["visit"] != "baseline"]


def test_real_dicom_trial_through_links(tmp_path: Path) -> None:
    need_data("dicom", "patient-positions")
    trial = positions_trial(tmp_path)
    (trial.dicom / "up").symlink_to(trial.dicom, target_is_directory=True)  # a loop
    out = tmp_path / "out"
    summary = _run(trial.dicom, out, trial.enrolment)
    assert not summary.failures, summary.failures
    assert sorted(v.split("/")[1] for v in summary.visits) == ["ses-24h", "ses-M2",
                                                               "ses-baseline"]
    for v in _followups(out):
        # 24h: vs baseline; M2: vs baseline and vs 24h
        assert len(v["comparisons"]) == (1 if v["visit"] == "24h" else 2), v["comparisons"]
        for c in v["comparisons"]:
            assert c["registration"]["status"] == "ok", c
            # no-change pairs: the issue-5 bar is <= 1 flagged per pair
            assert sum(1 for x in c["candidates"] if x["flagged"]) <= 1, c["candidates"]
        vol = [e for e in v["volume_change"] if e["reference_visit"] == "baseline"]
        assert len(vol) == 1 and not vol[0]["error"], v["volume_change"]
        assert not vol[0]["ventricular_enlargement"], vol[0]
        assert abs(vol[0]["brain_volume_change_pct"]) < 2.0, vol[0]
    assert (out / "reports" / "safety_table.csv").is_file()


def test_real_dicom_trial_with_a_new_focus_is_flagged_where_it_was_put(tmp_path: Path
                                                                        ) -> None:
    """The same trial with a 10 mm T1-dark sphere (0.6 x the white matter it
    fills) written into the M2 DICOM at a deep white-matter point: M2 is flagged,
    against the baseline and against 24 h, by a T1w decrease on the sphere; 24 h
    has nothing flagged; the M2 report names each flagged finding. (Looked at on
    2026-12-05: the montages show the dark sphere at the crosshair, in the left
    deep grey/white matter, 16 z below the reference.)"""
    need_data("dicom", "patient-positions")
    trial = positions_trial(tmp_path, focus=(10.0, 0.6))
    assert trial.focus_lps is not None
    out = tmp_path / "out"
    summary = _run(trial.dicom, out, trial.enrolment)
    assert not summary.failures, summary.failures
    focus_ras = np.asarray(trial.focus_lps) * np.array([-1.0, -1.0, 1.0])
    by_visit = {v["visit"]: v for v in _followups(out)}
    assert sum(1 for c in by_visit["24h"]["comparisons"] for x in c["candidates"]
               if x["flagged"]) == 0
    m2 = by_visit["M2"]
    assert m2["n_flagged"] >= 1
    for c in m2["comparisons"]:  # vs baseline and vs 24h (each in its reference's world)
        flagged = [x for x in c["candidates"] if x["flagged"]]
        hits = [x for x in flagged if x["type"] == "t1_signal_decrease"]
        assert hits, (c["reference_visit"], flagged)
        if c["reference_visit"] == "baseline":
            d = min(np.linalg.norm(np.asarray(x["centroid_ras_mm"]) - focus_ras) for x in hits)
            assert d <= trial.focus_mm / 2 + 2.0, (d, hits)
            assert len(flagged) <= 2, flagged  # the focus, and at most the bar's one
    from mri_safety.report import finding_id

    report = next((out / "reports").glob("*/ses-M2/report.html")).read_text()
    assert "t1 signal decrease" in report
    for c in m2["comparisons"]:
        for x in c["candidates"]:
            if x["flagged"]:
                assert finding_id(c, x) in report, finding_id(c, x)


def test_a_folder_without_dicom_is_a_failure_naming_it(tmp_path: Path) -> None:
    """No DICOM at all (a wrong folder) is a failure of the run, not "0 visits"."""
    dicom = tmp_path / "exports"
    dicom.mkdir()
    (dicom / "notes.txt").write_text("not an image")
    summary = _run(dicom, tmp_path / "out", None)
    assert summary.visits == {}
    assert any(str(dicom) in f and "no DICOM series found" in f for f in summary.failures), \
        summary.failures


def test_series_without_a_usable_baseline_are_listed_as_not_compared(tmp_path: Path) -> None:
    """Real MS patient03 (FLAIR, T2W at both studies; T1W at study2 only) as
    baseline and M2, with Rician noise of 0.5 x the median added to the baseline
    FLAIR so that QC finds it unusable: the M2 FLAIR then has nothing to be
    compared with, and the M2 T1W has no baseline T1W at all. Both are listed with
    the reason in the visit summary and the report; before 2026-12-05 they were
    silently left out, and a visit with nothing else flagged would have read "no
    candidates flagged". (Until 2026-12-06 the real baseline FLAIR itself was
    found unusable, wrongly: docs/qc.md, "Masked backgrounds".)"""
    from mri_safety.evaluation.dicom_trials import ms_trial

    need_data("longitudinal-ms", "patient03")
    trial = ms_trial(tmp_path, "patient03", noise={"study1_FLAIR": 0.5})
    out = tmp_path / "out"
    summary = _run(trial.dicom, out, trial.enrolment)
    assert not summary.failures, summary.failures
    (m2,) = _followups(out)
    assert [c["contrast"] for c in m2["comparisons"]] == ["t2w"]
    reasons = {Path(x["series"]).name.split("_")[-1]: x["reason"] for x in m2["not_compared"]}
    assert set(reasons) == {"FLAIR.nii.gz", "T1w.nii.gz"}, reasons
    assert "unusable by QC" in reasons["FLAIR.nii.gz"]
    assert "no brain T1w series at the baseline visit" == reasons["T1w.nii.gz"]
    report = next((out / "reports").glob("*/ses-M2/report.html")).read_text()
    assert "Not compared with the baseline" in report and "unusable by QC" in report
