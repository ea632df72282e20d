"""`mri-safety convert` end to end on real DICOM: exit codes, BIDS names,
sidecars, visits from an enrolment file, de-identified DICOM copies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from conftest import need_data

from pipelines.convert import EXIT_NOTHING, EXIT_OK, EXIT_PARTIAL


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mri_safety.cli", "convert", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("secret") / "site-secret"
    p.write_bytes(b"0123456789abcdef0123456789abcdef")
    p.chmod(0o600)
    return p


def test_clean_tree_exit_0_and_bids_layout(tmp_path, secret_file):
    src = need_data("dicom", "patient-positions", "HFS")
    enrol = tmp_path / "enrolment.csv"
    # the study is dated 2022-04-07 (patient ID "crlab"); dosing 10 days later
    # makes it the baseline
    enrol.write_text("patient_id,dosing_date\ncrlab,2022-04-17\n")
    out = tmp_path / "bids"
    res = _cli(src, out, "--enrolment", enrol, "--secret-file", secret_file)
    assert res.returncode == EXIT_OK, res.stderr
    report = json.loads((out / "conversion_report.json").read_text())
    conv = [s for s in report["series"] if s["status"] == "converted"]
    assert len(conv) == 1
    for s in conv:
        assert s["session"] == "baseline"
        assert s["region"] == "brain" and s["contrast"] == "T1w" and s["acq"] == "2d"
        nii = out / s["output"]
        assert nii.name.startswith(f"sub-{s['subject']}_ses-baseline_acq-brain2d")
        assert nii.name.endswith("_T1w.nii.gz")
        side = json.loads(nii.with_name(nii.name.replace(".nii.gz", ".json")).read_text())
        assert side["DaysFromDosing"] == -10
        assert side["RepetitionTime"] == pytest.approx(0.3)
        assert side["EchoTime"] == pytest.approx(0.00246)
        assert nib.load(nii).shape[:2] == (256, 256) or 35 in nib.load(nii).shape


def test_two_baselines_same_day_is_an_error_naming_both(tmp_path, secret_file):
    """patient-positions holds four studies of one patient on one day: with a
    dosing date after them, each could be the baseline."""
    src = need_data("dicom", "patient-positions")
    enrol = tmp_path / "enrolment.csv"
    enrol.write_text("patient_id,dosing_date\ncrlab,2022-04-17\n")
    out = tmp_path / "bids"
    res = _cli(src, out, "--enrolment", enrol, "--secret-file", secret_file)
    assert res.returncode == EXIT_NOTHING, res.stderr
    report = json.loads((out / "conversion_report.json").read_text())
    assert len(report["visit_errors"]) == 1
    msg = report["visit_errors"][0]
    assert sum(name in msg for name in ("HFS", "HFP", "HFDL", "HFDR")) >= 2, msg


def test_nothing_to_convert_exit_2(tmp_path, secret_file):
    src = tmp_path / "empty_export"
    src.mkdir()
    (src / "readme.txt").write_text("no images here")
    res = _cli(src, tmp_path / "out", "--secret-file", secret_file)
    assert res.returncode == EXIT_NOTHING, res.stderr


def test_partial_exit_8(tmp_path, secret_file):
    src = tmp_path / "export"
    shutil.copytree(need_data("dicom", "patient-positions", "HFS"), src / "good")
    bad = src / "bad"
    shutil.copytree(need_data("dicom", "patient-positions", "HFP"), bad)
    # make HFP a second series of the HFS study (else: two same-day studies)
    study = pydicom.dcmread(next((src / "good").glob("*.dcm")), stop_before_pixels=True)
    for f in bad.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study.StudyInstanceUID
        ds.save_as(f)
    victim = sorted(bad.glob("*.dcm"))[12]
    victim.write_bytes(victim.read_bytes()[:3000])
    res = _cli(src, tmp_path / "out", "--secret-file", secret_file)
    assert res.returncode == EXIT_PARTIAL, res.stderr
    assert victim.name in res.stderr


def test_missing_input_exit_1(tmp_path, secret_file):
    res = _cli(tmp_path / "nope", tmp_path / "out", "--secret-file", secret_file)
    assert res.returncode == 1
    assert "no such file" in res.stderr


def test_deidentified_dicom_copies(tmp_path, secret_file):
    src = need_data("dicom", "patient-positions", "HFS")
    out = tmp_path / "bids"
    res = _cli(src, out, "--dicom", "--secret-file", secret_file)
    assert res.returncode == EXIT_OK, res.stderr
    copies = sorted((out / "sourcedata" / "dicom").rglob("*.dcm"))
    assert len(copies) == 35
    originals = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                 for f in src.glob("*.dcm")}
    series = set()
    for f in copies:
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID not in originals
        assert ds.PatientIdentityRemoved == "YES"
        assert "HFS" not in str(ds.PatientName)
        series.add(ds.SeriesInstanceUID)
        assert ds.pixel_array.shape == (256, 256)
    assert len(series) == 1
