"""DICOM -> NIfTI conversion against dcm2niix reference conversions on real data.

Every reference NIfTI under ``DATA/dicom/*/ref/`` is compared with our
conversion of its source series: voxel values (scaled by slope/intercept) must
be identical and affines equal within 1e-3 mm after bringing both to the
closest canonical (RAS) axis order. Further tests run ``dcm2niix`` itself,
check the sidecar against the reference JSON (timing in seconds, phase
encoding direction in world space, slice timing in world slice order) and
exercise every safety check on modified copies of real files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import need_data

from mri_safety.dicom.records import SeriesGroup
from mri_safety.dicom.series import load_series_dir
from mri_safety.dicom.volume import ConversionError, Volume, convert_series, convert_series_all

AFFINE_TOL_MM = 1e-3

# Reference file (relative to DATA/dicom) -> source series (file or folder).
# Mosaic/EPI reference names are "<SeriesDescription>_<SeriesNumber>"; the
# series number is cross-checked against the reference JSON below.
_MOSAIC = {
    "ax": {"axasc35": 6, "axasc36": 9, "axasc36b": 11, "axdesc35": 7, "axdesc36": 10,
           "axint35": 8, "axint36": 12},
    "cor": {"corasc35": 16, "corasc36": 13, "cordesc35": 17, "cordesc36": 14,
            "corint35": 18, "corint36": 15},
    "sag": {"sagasc35": 22, "sagasc36": 19, "sagdesc35": 23, "sagdesc36": 20,
            "sagint35": 24, "sagint36": 21},
}


def _cases() -> dict[str, str]:
    cases: dict[str, str] = {}
    for plane, folders in _MOSAIC.items():
        for folder, sn in folders.items():
            order = next(o for o in ("asc", "desc", "int") if o in folder)
            nsl = folder[-2:] if folder[-1].isdigit() else folder[-3:-1]
            ref = f"siemens-mosaic-orientation/ref/{plane}_{order}_{nsl}sl_{sn}.nii"
            cases[ref] = f"siemens-mosaic-orientation/{plane}/{folder}"
    for n in (4, 5, 6, 7):
        cases[f"ge-siemens-epi/ref/DCM2NIIX_regression_test_{n}.nii"] = (
            f"ge-siemens-epi/20180918GE/mr_000{n}"
        )
    for n, pe in ((3, "AP"), (4, "PA"), (5, "RL"), (6, "LR")):
        cases[f"ge-siemens-epi/ref/EPI_PE={pe}_{n}.nii"] = f"ge-siemens-epi/20180918Si/mr_000{n}"
    for n in (5, 6):
        cases[f"siemens-xa30-enhanced/ref/{n}_anat-T1w_acq-tfl.nii"] = (
            f"siemens-xa30-enhanced/{n}_anat-T1w_acq-tfl"
        )
    for n in range(1, 10):
        cases[f"transfer-syntaxes/ref/{n}.nii"] = f"transfer-syntaxes/{n}.dcm"
    for pos in ("HFS", "HFP", "HFDL", "HFDR"):
        cases[f"patient-positions/ref/{pos}_t1_fl2d_sag.nii.gz"] = f"patient-positions/{pos}"
    cases["brain-t1-3d/ref/anat-T1w.nii.gz"] = "brain-t1-3d/dicoms"
    return cases


CASES = _cases()


def _case_id(ref: str) -> str:
    return ref.split("/")[0] + ":" + Path(ref).name.split(".nii")[0]


def _one_group(src: Path) -> SeriesGroup:
    groups = load_series_dir(src)
    assert len(groups) == 1, f"{src}: expected one series group, got {len(groups)}"
    return groups[0]


def _ref_values(img: nib.Nifti1Image) -> np.ndarray:
    """Scaled reference values; nibabel reports scl_slope as NaN after load,
    the proxy keeps the real scaling."""
    raw = np.asanyarray(img.dataobj.get_unscaled()).astype(np.float64)  # type: ignore[attr-defined]
    slope = img.dataobj.slope  # type: ignore[attr-defined]
    inter = img.dataobj.inter  # type: ignore[attr-defined]
    return raw * float(slope) + float(inter)


def compare_to_reference(vol: Volume, ref_img: nib.Nifti1Image) -> tuple[float, float]:
    """(max abs voxel difference, max abs affine difference) in canonical order."""
    ours = nib.as_closest_canonical(
        nib.Nifti1Image(vol.data.astype(np.float64) * vol.slope + vol.intercept, vol.affine)
    )
    ref_vals = nib.Nifti1Image(_ref_values(ref_img), ref_img.affine)
    ref_c = nib.as_closest_canonical(ref_vals)
    a, b = np.asanyarray(ours.dataobj), np.asanyarray(ref_c.dataobj)
    assert a.shape == b.shape, f"shape {a.shape} vs reference {b.shape}"
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(ours.affine - ref_c.affine)))


@pytest.mark.parametrize("ref", list(CASES), ids=[_case_id(r) for r in CASES])
def test_matches_dcm2niix_reference(ref: str) -> None:
    dicom = need_data("dicom")
    group = _one_group(dicom / CASES[ref])
    ref_json = dicom / ref.replace(".nii.gz", ".json").replace(".nii", ".json")
    if ref_json.exists():
        assert json.loads(ref_json.read_text())["SeriesNumber"] == group.first.series_number
    vol = convert_series(group)
    assert [p for p in vol.problems if p.level == "error"] == []
    vox, aff = compare_to_reference(vol, nib.load(dicom / ref))
    assert vox == 0.0, f"max abs voxel difference {vox}"
    assert aff <= AFFINE_TOL_MM, f"max abs affine difference {aff} mm"
    # The written NIfTI keeps the stored integers with the rescale, units and codes.
    img = vol.to_nifti()
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    if vol.data.ndim == 4:
        assert img.header.get_zooms()[3] == pytest.approx(vol.params["RepetitionTime"])


def _world_axis(affine: np.ndarray, code: str) -> np.ndarray:
    """World direction (RAS) of a BIDS phase-encoding code such as ``j-``."""
    axis = "ijk".index(code[0])
    v = affine[:3, axis] / np.linalg.norm(affine[:3, axis])
    return -v if code.endswith("-") else v


# Reference JSONs exist for all but XA30 series 6; the anatomical 2D/3D series
# are covered by the voxel test (dcm2niix derives their 2D SliceTiming from
# Siemens private fields we do not read).
SIDECAR_CASES = [r for r in CASES if "patient-positions" not in r and "brain" not in r
                 and "6_anat" not in r]


@pytest.mark.parametrize("ref", SIDECAR_CASES, ids=[_case_id(r) for r in SIDECAR_CASES])
def test_sidecar_matches_reference_json(ref: str) -> None:
    dicom = need_data("dicom")
    ref_json = dicom / ref.replace(".nii", ".json")
    expect: dict[str, Any] = json.loads(ref_json.read_text())
    vol = convert_series(_one_group(dicom / CASES[ref]))
    p = vol.params
    for key in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
                "MagneticFieldStrength", "MRAcquisitionType", "PatientPosition"):
        if key in expect:
            assert p[key] == pytest.approx(expect[key], abs=1e-6), key
    ref_aff = nib.load(dicom / ref).affine
    if "PhaseEncodingDirection" in expect and "PhaseEncodingDirection" in p:
        # dcm2niix flips rows, so the code can differ; the world direction must not.
        ours = _world_axis(vol.affine, p["PhaseEncodingDirection"])
        theirs = _world_axis(ref_aff, expect["PhaseEncodingDirection"])
        assert float(ours @ theirs) > 0.99
    if "SliceTiming" in expect and "SliceTiming" in p:
        ours_t = np.asarray(p["SliceTiming"])
        theirs_t = np.asarray(expect["SliceTiming"])
        # Same slice order in world space? (k axes parallel or anti-parallel.)
        if float(vol.affine[:3, 2] @ ref_aff[:3, 2]) < 0:
            theirs_t = theirs_t[::-1]
        # Siemens CSA times jitter by 2.5 ms between volumes; dcm2niix reads
        # them from a later volume than the first.
        assert np.max(np.abs(ours_t - theirs_t)) <= 0.003


PHI_KEYS = {"PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate",
            "AcquisitionDate", "AcquisitionTime", "InstitutionName", "StationName",
            "SeriesDescription", "ProtocolName", "StudyDescription", "DeviceSerialNumber",
            "SeriesInstanceUID", "StudyInstanceUID", "ContrastBolusAgent"}


@pytest.mark.parametrize("src", ["ge-siemens-epi/20180918GE/mr_0004",
                                 "ge-siemens-epi/20180918Si/mr_0003",
                                 "siemens-xa30-enhanced/5_anat-T1w_acq-tfl"])
def test_params_have_bids_units_and_no_phi(src: str) -> None:
    group = _one_group(need_data("dicom") / src)
    vol = convert_series(group)
    p = vol.params
    assert not PHI_KEYS & set(p)
    text = json.dumps(p)
    for kw in ("PatientName", "PatientID", "StudyDate", "InstitutionName", "SeriesDescription"):
        value = str(group.tags.get(kw) or "")
        if len(value) >= 4:
            assert value not in text, f"{kw} leaked into params"
    assert group.study_date not in text
    assert 0 < p["RepetitionTime"] < 10  # seconds, not ms
    assert 0 < p["EchoTime"] < 0.2
    assert isinstance(p["ContrastBolusAgentPresent"], bool)
    assert p["DICOMGeometry"]["Irregular"] is False


def _dcm2niix_bin() -> str:
    exe = shutil.which("dcm2niix")
    if exe is None:
        try:
            import dcm2niix  # type: ignore[import-untyped]

            exe = str(dcm2niix.bin)
        except ImportError:
            pytest.skip("dcm2niix not installed")
    return exe


@pytest.mark.parametrize("src", ["patient-positions/HFS", "transfer-syntaxes/7.dcm"])
def test_against_dcm2niix_run_now(src: str, tmp_path: Path) -> None:
    path = need_data("dicom") / src
    args = [_dcm2niix_bin(), "-z", "n", "-b", "n", "-f", "out", "-o", str(tmp_path)]
    if path.is_file():
        args += ["-s", "y"]
    subprocess.run([*args, str(path)], check=True, capture_output=True, timeout=120)
    outs = sorted(tmp_path.glob("out*.nii"))
    assert len(outs) == 1, outs
    vox, aff = compare_to_reference(convert_series(_one_group(path)), nib.load(outs[0]))
    assert vox == 0.0 and aff <= AFFINE_TOL_MM


# --------------------------------------------------------------------------- safety checks


def _copy_series(src: Path, dst: Path) -> list[Path]:
    dst.mkdir()
    files = sorted(p for p in src.iterdir() if p.is_file())
    for f in files:
        shutil.copy(f, dst / f.name)
    return sorted(dst.iterdir())


def _sorted_by_position(files: list[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    dss = [(f, pydicom.dcmread(f)) for f in files]
    n = np.cross(*np.asarray(dss[0][1].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(dss, key=lambda fd: float(np.asarray(fd[1].ImagePositionPatient, float) @ n))


@pytest.fixture(scope="module")
def hfs() -> tuple[SeriesGroup, Volume]:
    group = _one_group(need_data("dicom", "patient-positions", "HFS"))
    return group, convert_series(group)


def test_missing_middle_slice_raises_with_gap(hfs: tuple[SeriesGroup, Volume]) -> None:
    group, full = hfs
    vol_order = sorted(group.instances, key=lambda r: float(
        np.asarray(r.image_position) @ np.cross(*np.reshape(r.image_orientation, (2, 3)))))
    dropped = vol_order[17]
    g = dataclasses.replace(group, instances=[r for r in group.instances if r is not dropped])
    with pytest.raises(ConversionError) as err:
        convert_series(g)
    msg = str(err.value)
    assert "missing slices" in msg and "9.600 mm" in msg and "4.8000 mm" in msg
    assert msg.startswith(group.source_dir)
    # Opt-in: the gap is one whole step, so it is filled with zeros and the
    # geometry of every other slice is unchanged.
    vol = convert_series(g, allow_irregular=True)
    assert vol.shape == full.shape
    assert np.max(np.abs(vol.affine - full.affine)) < 1e-3
    assert [p.level for p in vol.problems] == ["warning", "warning"]  # gap + instance hole
    assert vol.params["DICOMGeometry"]["MissingSlicesFilled"] == 1
    assert not vol.data[:, :, 17].any()
    keep = [k for k in range(full.shape[2]) if k != 17]
    assert np.array_equal(vol.data[:, :, keep], full.data[:, :, keep])


def test_instance_number_hole_raises(hfs: tuple[SeriesGroup, Volume]) -> None:
    group, _ = hfs
    # Positions stay complete, but the InstanceNumbers skip one value (a lost
    # file at the end of a stack leaves no position gap, only this hole).
    last = max(group.instances, key=lambda r: r.instance_number or 0)
    assert last.instance_number is not None
    moved = dataclasses.replace(last, instance_number=last.instance_number + 1)
    recs = [moved if r is last else r for r in group.instances]
    with pytest.raises(ConversionError, match=f"InstanceNumber has 1 hole.*{last.instance_number}"):
        convert_series(dataclasses.replace(group, instances=recs))
    vol = convert_series(dataclasses.replace(group, instances=recs), allow_irregular=True)
    assert any("InstanceNumber" in p.message for p in vol.problems)


def test_nonuniform_spacing_raises_with_numbers(tmp_path: Path) -> None:
    files = _copy_series(need_data("dicom", "patient-positions", "HFS"), tmp_path / "s")
    stack = _sorted_by_position(files)
    f, ds = stack[10]
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float)
                                   + 1.2 * np.cross(iop[0], iop[1]))
    ds.save_as(f)
    group = _one_group(tmp_path / "s")
    with pytest.raises(ConversionError) as err:
        convert_series(group)
    msg = str(err.value)
    assert "non-uniform slice spacing" in msg
    assert "3.6 mm x1" in msg and "6 mm x1" in msg and "4.8 mm x32" in msg
    vol = convert_series(group, allow_irregular=True)
    assert vol.params["DICOMGeometry"]["Irregular"] is True
    assert any("non-uniform" in p.message and p.level == "warning" for p in vol.problems)


def test_gantry_tilt_raises_with_angle(tmp_path: Path) -> None:
    files = _copy_series(need_data("dicom", "patient-positions", "HFS"), tmp_path / "s")
    stack = _sorted_by_position(files)
    iop = np.asarray(stack[0][1].ImageOrientationPatient, dtype=float).reshape(2, 3)
    spacing = 4.8
    shift = np.tan(np.radians(5.0)) * spacing
    for k, (f, ds) in enumerate(stack):
        ds.ImagePositionPatient = [round(float(x), 5) for x in
                                   np.asarray(ds.ImagePositionPatient, float) + k * shift * iop[0]]
        ds.save_as(f)
    group = _one_group(tmp_path / "s")
    with pytest.raises(ConversionError, match=r"gantry tilt / sheared stack: .* 5\.000 degrees"):
        convert_series(group)
    vol = convert_series(group, allow_irregular=True)
    from mri_safety.dicom.volume import tilt_of

    assert tilt_of(vol) == pytest.approx(5.0, abs=0.01)
    assert any("tilt" in p.message for p in vol.problems)


def test_inconsistent_orientation_and_matrix_raise(hfs: tuple[SeriesGroup, Volume]) -> None:
    group, _ = hfs
    recs = list(group.instances)
    iop = recs[5].image_orientation
    assert iop is not None
    rot = np.radians(2.0)
    tilted = (iop[0], iop[1] * np.cos(rot), np.sin(rot), *iop[3:])
    bad = [*recs[:5], dataclasses.replace(recs[5], image_orientation=tilted), *recs[6:]]
    with pytest.raises(ConversionError, match="inconsistent ImageOrientationPatient"):
        convert_series(dataclasses.replace(group, instances=bad))
    bad = [*recs[:5], dataclasses.replace(recs[5], rows=128), *recs[6:]]
    with pytest.raises(ConversionError, match="inconsistent matrix"):
        convert_series(dataclasses.replace(group, instances=bad))


@pytest.mark.parametrize("attr", ["ImageOrientationPatient", "ImagePositionPatient", "PixelData"])
def test_missing_attribute_names_the_file(attr: str, tmp_path: Path) -> None:
    files = _copy_series(need_data("dicom", "patient-positions", "HFS"), tmp_path / "s")
    ds = pydicom.dcmread(files[7])
    del ds[attr]
    ds.save_as(files[7])
    with pytest.raises(ConversionError) as err:
        convert_series(_one_group(tmp_path / "s"))
    assert err.value.path == str(files[7])
    assert str(err.value).startswith(str(files[7]))
    assert (attr if attr != "PixelData" else "no PixelData") in str(err.value)


def test_unequal_slices_per_time_point_raises() -> None:
    group = _one_group(need_data("dicom", "ge-siemens-epi", "20180918GE", "mr_0004"))
    g = dataclasses.replace(group, instances=group.instances[:-1])
    with pytest.raises(ConversionError, match="unequal number of slices per time point"):
        convert_series(g)


def test_rescale_uniform_and_per_slice(tmp_path: Path) -> None:
    src = need_data("dicom", "patient-positions", "HFS")
    full = convert_series(_one_group(src))
    files = _copy_series(src, tmp_path / "u")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-10"
        ds.save_as(f)
    vol = convert_series(_one_group(tmp_path / "u"))
    assert vol.data.dtype == full.data.dtype and np.array_equal(vol.data, full.data)
    assert (vol.slope, vol.intercept) == (2.5, -10.0)
    nib.save(vol.to_nifti(), tmp_path / "u.nii.gz")
    back = nib.load(tmp_path / "u.nii.gz")
    assert (back.dataobj.slope, back.dataobj.inter) == (2.5, -10.0)  # type: ignore[attr-defined]
    assert np.allclose(back.get_fdata(), full.data * 2.5 - 10)

    stack = _sorted_by_position(files)
    f, ds = stack[3]
    ds.RescaleSlope = "5"
    ds.save_as(f)
    vol = convert_series(_one_group(tmp_path / "u"))
    assert vol.data.dtype == np.float32 and (vol.slope, vol.intercept) == (1.0, 0.0)
    assert vol.params["DICOMGeometry"]["RescaleVariesPerSlice"] is True
    assert np.allclose(vol.data[:, :, 3], full.data[:, :, 3] * 5.0 - 10)
    assert np.allclose(vol.data[:, :, 4], full.data[:, :, 4] * 2.5 - 10)


def test_enhanced_two_stacks_split_or_error(tmp_path: Path) -> None:
    src = next(need_data("dicom", "siemens-xa30-enhanced", "5_anat-T1w_acq-tfl").iterdir())
    ds = pydicom.dcmread(src)
    for item in ds.PerFrameFunctionalGroupsSequence[48:]:
        item.FrameContentSequence[0].StackID = "2"
    (tmp_path / "e").mkdir()
    ds.save_as(tmp_path / "e" / src.name)
    group = _one_group(tmp_path / "e")
    with pytest.raises(ConversionError, match="holds 2 stacks"):
        convert_series(group)
    full = convert_series(_one_group(src.parent))
    parts = convert_series_all(group)
    assert [v.shape for v in parts] == [(128, 128, 48), (128, 128, 48)]
    starts = []
    for v in parts:
        # Where does this stack start in the full volume? Same grid, shifted along k.
        k0 = float((np.linalg.inv(full.affine) @ v.affine[:, 3])[2])
        assert k0 == pytest.approx(round(k0), abs=1e-3)
        k = round(k0)
        starts.append(k)
        assert np.array_equal(v.data, full.data[:, :, k : k + 48])
        assert np.allclose(v.affine[:3, :3], full.affine[:3, :3], atol=1e-6)
    assert sorted(starts) == [0, 48]
    assert [v.params["DICOMGeometry"]["EnhancedSubVolume"]["StackID"] for v in parts] == ["1", "2"]


def test_conversion_error_names_file() -> None:
    err = ConversionError("/data/x/IM_0001.dcm", "missing slices")
    assert str(err) == "/data/x/IM_0001.dcm: missing slices"
    assert isinstance(err, Exception)


def test_multiframe_without_per_frame_groups_raises(tmp_path: Path) -> None:
    src = next(need_data("dicom", "siemens-xa30-enhanced", "5_anat-T1w_acq-tfl").iterdir())
    ds = pydicom.dcmread(src)
    del ds.PerFrameFunctionalGroupsSequence
    (tmp_path / "m").mkdir()
    ds.save_as(tmp_path / "m" / "mf.dcm")
    with pytest.raises(ConversionError, match="96 frames without PerFrameFunctionalGroupsSequence"):
        convert_series(_one_group(tmp_path / "m"))


def test_gzipped_compressed_file_converts(tmp_path: Path) -> None:
    import gzip

    dicom = need_data("dicom")
    (tmp_path / "g").mkdir()
    raw = (dicom / "transfer-syntaxes" / "9.dcm").read_bytes()  # JPEG 2000
    (tmp_path / "g" / "9.dcm.gz").write_bytes(gzip.compress(raw))
    vol = convert_series(_one_group(tmp_path / "g"))
    vox, aff = compare_to_reference(vol, nib.load(dicom / "transfer-syntaxes" / "ref" / "9.nii"))
    assert vox == 0.0 and aff <= AFFINE_TOL_MM


def test_monochrome1_is_flagged(tmp_path: Path) -> None:
    files = _copy_series(need_data("dicom", "patient-positions", "HFS"), tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(f)
    vol = convert_series(_one_group(tmp_path / "s"))
    assert any("MONOCHROME1" in p.message and p.level == "warning" for p in vol.problems)
