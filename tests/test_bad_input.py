"""Bad-input corpus built from real files: each fault gets a clear error or
warning naming the file, and every good series in the same tree converts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import need_data
from pydicom.uid import generate_uid

from pipelines.convert import EXIT_PARTIAL, convert_tree

SECRET = b"test-secret-bad-input"


def _copy_series(src: Path, dst: Path, tag: str, edit=None) -> list[Path]:
    """Copy a real series with fresh Series/SOP UIDs (so copies are distinct
    series of one study) and an optional per-dataset edit(ds, index)."""
    dst.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[tag, "series"])
    out = []
    for i, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.PatientID = "BADINPUT01"
        ds.StudyDate = "20240110"
        if edit is not None:
            edit(ds, i)
        p = dst / f"{tag}_{i:03d}.dcm"
        ds.save_as(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    hfs = need_data("dicom", "patient-positions", "HFS")
    root = tmp_path_factory.mktemp("bad") / "export"
    paths: dict[str, Path] = {}

    good = _copy_series(hfs, root / "good", "good")
    paths["good"] = good[0]

    def passwd(ds, i):
        ds.SeriesDescription = "../../etc/passwd"
        ds.ProtocolName = "../../etc/passwd"

    paths["passwd"] = _copy_series(hfs, root / "passwd", "passwd", passwd)[0]

    def non_ascii(ds, i):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Zoë^Ångström"

    paths["nonascii"] = _copy_series(hfs, root / "nonascii", "nonascii", non_ascii)[0]

    trunc = _copy_series(hfs, root / "truncated", "trunc")
    victim = trunc[17]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 6 // 10])
    paths["truncated"] = victim

    (root / "junk").mkdir()
    (root / "junk" / "empty.dcm").write_bytes(b"")
    (root / "junk" / "notes.txt").write_text("scanner export notes\n")
    paths["empty"] = root / "junk" / "empty.dcm"
    paths["text"] = root / "junk" / "notes.txt"

    def no_ipp(ds, i):
        if i == 10:
            del ds.ImagePositionPatient

    nipp = _copy_series(hfs, root / "noipp", "noipp", no_ipp)
    paths["noipp"] = nipp[10]

    def no_pixels(ds, i):
        if i == 5:
            del ds.PixelData

    npix = _copy_series(hfs, root / "nopixels", "nopix", no_pixels)
    paths["nopixels"] = npix[5]

    gap = _copy_series(hfs, root / "gap", "gap")
    gap[20].unlink()
    paths["gap"] = gap[19]

    # two series mixed in one folder
    mixed = root / "mixed"
    a = _copy_series(hfs, mixed, "mixA")
    hfp = need_data("dicom", "patient-positions", "HFP")
    b = _copy_series(hfp, mixed, "mixB")
    paths["mixA"], paths["mixB"] = a[0], b[0]

    # duplicated instances (same SOPInstanceUID under two names)
    dup = _copy_series(hfs, root / "dup", "dup")
    shutil.copy(dup[3], root / "dup" / "copy_of_3.dcm")
    paths["dup"] = dup[0]
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def converted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out") / "bids"
    report = convert_tree(corpus["root"], out, secret=SECRET)
    return report, out


def _row_for(report, path: Path):
    rel = str(path.parent.relative_to(path.parents[1]))
    rows = [s for s in report.series if s.source.split("/")[0] == rel]
    assert rows, f"no report row for {rel}"
    return rows


def test_good_series_convert(corpus, converted):
    report, out = converted
    for name in ("good", "passwd", "nonascii", "dup"):
        rows = _row_for(report, corpus[name])
        assert [r.status for r in rows] == ["converted"], (name, rows)
        img = nib.load(out / rows[0].output)
        assert img.shape == (256, 256, 35) or sorted(img.shape) == [35, 256, 256]
    mixed = _row_for(report, corpus["mixA"])
    assert sorted(r.status for r in mixed) == ["converted", "converted"]
    assert report.exit_code == EXIT_PARTIAL


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated", ["pixel"]),
        ("noipp", ["ImagePositionPatient"]),
        ("nopixels", ["pixel"]),
        ("gap", ["missing"]),
    ],
)
def test_broken_series_fail_naming_the_file(corpus, converted, name, words):
    report, _ = converted
    rows = _row_for(report, corpus[name])
    assert [r.status for r in rows] == ["failed"], rows
    msg = " ".join(rows[0].errors)
    assert str(corpus[name].parent) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg


def test_truncated_file_is_named(corpus, converted):
    report, _ = converted
    rows = _row_for(report, corpus["truncated"])
    assert corpus["truncated"].name in " ".join(rows[0].errors)


def test_junk_files_are_skipped_with_reason(corpus, converted):
    report, _ = converted
    by_path = {p.path: p for p in report.file_problems}
    assert "empty" in by_path[str(corpus["empty"])].message
    assert "not a DICOM" in by_path[str(corpus["text"])].message


def test_duplicate_kept_once(corpus, converted):
    report, out = converted
    dups = [p for p in report.file_problems if "duplicate" in p.message]
    assert len(dups) == 1 and dups[0].path.endswith(("copy_of_3.dcm", "dup_003.dcm"))
    row = _row_for(report, corpus["dup"])[0]
    assert row.n_instances == 35


def test_no_path_escape_and_no_description_in_names(corpus, converted):
    report, out = converted
    outside = out.parent
    written = {p.relative_to(outside) for p in outside.rglob("*") if p.is_file()}
    assert all(str(p).startswith(out.name) for p in written), written
    assert not any("passwd" in str(p) or ".." in p.parts for p in written)
    row = _row_for(report, corpus["passwd"])[0]
    side = json.loads((out / row.output.replace(".nii.gz", ".json")).read_text())
    assert "passwd" not in json.dumps(side)


def test_report_files_written(converted):
    report, out = converted
    data = json.loads((out / "conversion_report.json").read_text())
    assert data["exit_code"] == EXIT_PARTIAL
    tsv = (out / "conversion_report.tsv").read_text().splitlines()
    assert tsv[0].startswith("status\tsource")
    assert sum(1 for line in tsv if line.startswith("failed")) == 4


def test_voxels_of_good_copy_match_source(corpus, converted):
    """The good copy converts to the same voxels as its untouched source."""
    report, out = converted
    row = _row_for(report, corpus["good"])[0]
    ours = nib.as_closest_canonical(nib.load(out / row.output))
    ref = nib.as_closest_canonical(
        nib.load(need_data("dicom", "patient-positions", "ref", "HFS_t1_fl2d_sag.nii.gz"))
    )
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    assert np.abs(ours.affine - ref.affine).max() < 1e-3
