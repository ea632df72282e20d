"""Discovery and series splitting on real files: DICOMDIR media, .dcm.gz
members, duplicates, stray files, and dcm2niix-style splitting."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import need_data
from pydicom.fileset import FileSet

from mri_safety.dicom.discover import discover, read_dataset
from mri_safety.dicom.series import split_series


@pytest.fixture(scope="module")
def hfs() -> Path:
    return need_data("dicom", "patient-positions", "HFS")


def test_headers_only_index(hfs):
    res = discover(hfs, workers=1)
    assert len(res.instances) == 35 and not res.problems
    rec = res.instances[0]
    assert rec.has_pixel_data and rec.rows == 256 and rec.columns == 256
    assert rec.image_orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert rec.tags["RepetitionTime"] == 300.0 and rec.tags["MRAcquisitionType"] == "2D"


def test_parallel_equals_serial():
    src = need_data("dicom", "brain-t1-3d", "dicoms")
    serial = discover(src, workers=1)
    parallel = discover(src, workers=2)
    assert [r.sop_instance_uid for r in serial.instances] == [
        r.sop_instance_uid for r in parallel.instances
    ]
    assert len(serial.instances) == 384


def test_gzip_members_and_stray_files(tmp_path, hfs):
    files = sorted(hfs.glob("*.dcm"))[:3]
    for f in files:
        with gzip.open(tmp_path / (f.name + ".gz"), "wb") as gz:
            gz.write(f.read_bytes())
    with gzip.open(tmp_path / "volume.nii.gz", "wb") as gz:
        gz.write(b"\x5c\x01" + b"\0" * 400)
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4 not dicom")
    (tmp_path / "empty").write_bytes(b"")
    res = discover(tmp_path, workers=1)
    assert len(res.instances) == 3
    reasons = {Path(p.path).name: p.message for p in res.problems}
    assert "without DICOM" in reasons["volume.nii.gz"]
    assert "not a DICOM" in reasons["scan.pdf"]
    assert "empty" in reasons["empty"]
    ds = read_dataset(res.instances[0])
    assert ds.pixel_array.shape == (256, 256)


def test_dicomdir_media(tmp_path, hfs):
    """A DICOMDIR written by pydicom: its referenced files are found once."""
    fs = FileSet()
    for f in sorted(hfs.glob("*.dcm"))[:5]:
        fs.add(pydicom.dcmread(f))
    media = tmp_path / "media"
    fs.write(media)
    res_dir = discover(media / "DICOMDIR", workers=1)
    res_tree = discover(media, workers=1)
    assert len(res_dir.instances) == 5
    assert len(res_tree.instances) == 5
    assert any("DICOMDIR" in p.message for p in res_tree.problems)


def test_duplicates_kept_once(tmp_path, hfs):
    for f in sorted(hfs.glob("*.dcm"))[:4]:
        shutil.copy(f, tmp_path / f.name)
        shutil.copy(f, tmp_path / ("copy_" + f.name))
    res = discover(tmp_path, workers=1)
    assert len(res.instances) == 4
    dups = [p for p in res.problems if "duplicate" in p.message]
    assert len(dups) == 4 and all(Path(p.path).name.startswith("copy_") for p in dups)


def test_split_by_echo_and_orientation(tmp_path, hfs):
    """One SeriesInstanceUID holding two echoes and a second orientation is
    split into three groups, each of one geometry."""
    src = sorted(hfs.glob("*.dcm"))
    for i, f in enumerate(src[:10]):
        ds = pydicom.dcmread(f)
        ds.EchoNumbers = 2
        ds.EchoTime = 9.8
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
        ds.save_as(tmp_path / f"echo2_{i}.dcm")
        shutil.copy(f, tmp_path / f"echo1_{i}.dcm")
    ds = pydicom.dcmread(src[20])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(tmp_path / "axial.dcm")
    groups, problems = split_series(discover(tmp_path, workers=1).instances)
    assert not problems
    assert sorted(len(g.instances) for g in groups) == [1, 10, 10]
    assert {g.split_index for g in groups} == {1, 2, 3}
    assert all("orientation" in g.split_reason and "echo" in g.split_reason for g in groups)
    assert len({g.key for g in groups}) == 3


def test_symlinked_folders_are_followed_once(tmp_path, hfs):
    """A tree of links (series folders linked in, as exports are often assembled)
    is read like the folders themselves; a link back up the tree is walked once."""
    tree = tmp_path / "tree"
    (tree / "visit1").mkdir(parents=True)
    (tree / "visit1" / "series").symlink_to(hfs, target_is_directory=True)
    (tree / "visit1" / "loop").symlink_to(tree, target_is_directory=True)
    res = discover(tree, workers=1)
    assert len(res.instances) == 35
    assert not [p for p in res.problems if "duplicate" in p.message]
