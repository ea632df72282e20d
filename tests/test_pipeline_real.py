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

import pydicom
import pytest
from conftest import need_data

pytestmark = pytest.mark.slow

SECRET = b"real-pipeline-test-secret-012345"
VISITS = {"HFS": "baseline", "HFP": "24h", "HFDL": "M2"}


def _run(dicom: Path, out: Path, enrolment: Path | None):
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    with local_cluster(n_workers=2) as c, Client(c) as client:
        return run_trial(dicom, out, client, secret=SECRET, enrolment=enrolment)


def test_real_dicom_trial_through_links(tmp_path: Path) -> None:
    src = need_data("dicom", "patient-positions")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    overrides = []
    for name, label in VISITS.items():
        (dicom / name).symlink_to(src / name, target_is_directory=True)
        first = sorted((src / name).iterdir())[0]
        uid = pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID
        overrides.append(f"{uid}={label}")
    (dicom / "up").symlink_to(dicom, target_is_directory=True)  # a loop
    enrol = tmp_path / "enrolment.csv"
    enrol.write_text("patient_id,dosing_date,route,visit_overrides\n"
                     f"crlab,2022-04-07,intrathecal,{';'.join(overrides)}\n")
    out = tmp_path / "out"
    summary = _run(dicom, out, enrol)
    assert not summary.failures, summary.failures
    assert sorted(v.split("/")[1] for v in summary.visits) == ["ses-24h", "ses-M2",
                                                               "ses-baseline"]
    for path in sorted((out / "visits").glob("*/ses-*/visit_summary.json")):
        v = json.loads(path.read_text())
        if v["visit"] == "baseline":
            continue
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


def test_a_folder_without_dicom_is_a_failure_naming_it(tmp_path: Path) -> None:
    """No DICOM at all (a wrong folder) is a failure of the run, not "0 visits"."""
    dicom = tmp_path / "exports"
    dicom.mkdir()
    (dicom / "notes.txt").write_text("not an image")
    summary = _run(dicom, tmp_path / "out", None)
    assert summary.visits == {}
    assert any(str(dicom) in f and "no DICOM series found" in f for f in summary.failures), \
        summary.failures
