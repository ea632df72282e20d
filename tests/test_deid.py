"""De-identification on real DICOM files (PS3.15 Table E.1-1 basic profile,
modified-dates option, UID remapping, exclusion rules, the site secret)."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import need_data
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from mri_safety.dicom.deid import (
    ANCHOR_DATE,
    Deidentifier,
    exclusion_reason,
    load_secret,
    load_table,
    parse_da,
    scrub_text,
    write_deidentified_series,
)
from mri_safety.dicom.deid.profile import RETAINED
from mri_safety.dicom.records import InstanceRecord

SECRET = b"test-secret-for-deid-0123456789abcdef"
OTHER_SECRET = b"another-site-secret-9876543210fedcba"

# path -> (relative path under data/dicom, read pixels?)
FILES: dict[str, tuple[str, bool]] = {
    "brain-t1-3d": ("brain-t1-3d/dicoms/N2D_0054.dcm", True),
    "hfs": ("patient-positions/HFS", True),  # first file of the series
    "xa30": ("siemens-xa30-enhanced/5_anat-T1w_acq-tfl", False),  # 96 frames: header only
    "ge-epi": ("ge-siemens-epi/20180918GE/mr_0004", True),
    "ts-jpeg-lossless": ("transfer-syntaxes/5.dcm", True),
}


def _path(name: str, index: int = 0) -> Path:
    rel, _ = FILES[name]
    p = need_data("dicom", *rel.split("/"))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".dcm")
        return files[index]
    return p


def _read(name: str, index: int = 0) -> Dataset:
    return pydicom.dcmread(_path(name, index), stop_before_pixels=not FILES[name][1])


Path_ = tuple[tuple[int, int], ...]


def _walk(ds: Dataset, prefix: Path_ = ()) -> Iterator[tuple[Path_, DataElement]]:
    """(path, element) for every element; path = ((seq tag, item index), ...)."""
    for elem in ds:
        yield prefix, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, (*prefix, (int(elem.tag), i)))


def _at(ds: Dataset, path: Path_, tag: int) -> DataElement | None:
    cur = ds
    for seq_tag, i in path:
        if seq_tag not in cur or len(cur[seq_tag].value) <= i:
            return None
        cur = cur[seq_tag].value[i]
    return cur[tag] if tag in cur else None


def _empty(value: object) -> bool:
    return (
        value is None
        or value == ""
        or value == b""
        or (hasattr(value, "__len__") and len(value) == 0)
    )


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(SECRET)


# ---------------------------------------------------------------- the table


def test_table_is_the_basic_profile() -> None:
    table = load_table()
    assert len(table) > 600  # Table E.1-1 lists ~650 attributes

    def action(kw: str) -> str | None:
        tag = pydicom.datadict.tag_for_keyword(kw)
        assert tag is not None
        return table.action(tag)

    assert action("PatientName") == "Z"
    assert action("PatientID") == "Z/D"
    assert action("SeriesDescription") == "X"
    assert action("ProtocolName") == "X/D"
    assert action("DeviceSerialNumber") == "X/Z/D"
    assert action("SOPInstanceUID") == "U"
    assert action("StudyDate") == "Z"
    assert action("RepetitionTime") is None  # acquisition parameters are not listed
    assert table.action(0x60003000) == "X"  # overlay data, repeating group
    assert table.action(0x60223000) == "X"


# ---------------------------------------------------------- real-file checks


@pytest.mark.parametrize("name", list(FILES))
def test_listed_attributes_lose_their_values(deid: Deidentifier, name: str) -> None:
    src = _read(name)
    study = parse_da(str(src.StudyDate))
    assert study is not None
    dosing = study - dt.timedelta(days=17)
    out = deid.deidentify(src, pseudonym="PTEST", dosing_date=dosing)
    table = load_table()
    checked = 0
    for path, elem in _walk(src):
        tag = int(elem.tag)
        action = table.action(tag)
        if action is None or action == "U" or elem.tag.is_private or tag in RETAINED:
            continue
        if _empty(elem.value):
            continue
        new = _at(out, path, tag)
        checked += 1
        if elem.VR == "TM" and action != "X":
            continue  # times of day are kept by design (whole-day shift)
        if new is None or _empty(new.value):
            continue
        assert new.value != elem.value, f"{name}: {elem.keyword or elem.tag} kept its value"
    assert checked >= 10, f"{name}: only {checked} listed attributes found"
    # identifying strings are nowhere in the written header
    probe = out.copy()
    for kw in ("PixelData",):
        if kw in probe:
            del probe[kw]
    buf = io.BytesIO()
    probe.save_as(buf, enforce_file_format=True)
    blob = buf.getvalue()
    for kw in (
        "PatientName",
        "PatientID",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "DeviceSerialNumber",
        "StudyDescription",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "PatientBirthDate",
    ):
        value = str(src.get(kw, "") or "")
        if len(value) >= 4:
            assert value.encode() not in blob, f"{name}: {kw} value found in output header"


@pytest.mark.parametrize("name", list(FILES))
def test_patient_module_and_method(deid: Deidentifier, name: str) -> None:
    src = _read(name)
    before = src.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=lambda e: "")
    pseudo = deid.pseudonym(str(src.PatientID))
    out = deid.deidentify(src, pseudonym=pseudo, dosing_date=dt.date(2020, 1, 1))
    assert (
        src.to_json_dict(bulk_data_threshold=10**9, bulk_data_element_handler=lambda e: "")
        == before
    )
    assert str(out.PatientName) == pseudo and out.PatientID == pseudo
    assert str(src.PatientID) not in pseudo
    assert out.get("PatientBirthDate", "") == "" and out.get("PatientSex", "") == ""
    for kw in (
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "OtherPatientIDs",
        "SeriesDescription",
        "ProtocolName",
        "StudyDescription",
        "InstitutionName",
        "InstitutionAddress",
    ):
        assert kw not in out, kw
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert all(
        item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence
    )
    assert all(len(v) <= 64 for v in out.DeidentificationMethod)
    # private tags and curves/overlays gone at every level, meta group rebuilt
    assert not any(e.tag.is_private for _, e in _walk(out))
    assert not any(e.tag.group >> 8 in (0x50, 0x60) for _, e in _walk(out))
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    # acquisition parameters and geometry kept
    for kw in ("Modality", "Manufacturer", "SOPClassUID", "Rows", "Columns"):
        assert out.get(kw) == src.get(kw), kw
    for kw in (
        "RepetitionTime",
        "EchoTime",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "PixelSpacing",
        "SliceThickness",
        "MagneticFieldStrength",
        "ImageType",
    ):
        if kw in src:
            assert out[kw].value == src[kw].value, kw


def test_uids_remapped_consistently(deid: Deidentifier) -> None:
    a, b = _read("hfs", 0), _read("hfs", 1)
    oa = deid.deidentify(a, pseudonym="PA", dosing_date=None)
    ob = deid.deidentify(b, pseudonym="PA", dosing_date=None)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a[kw].value == b[kw].value
        assert oa[kw].value == ob[kw].value == deid.uid(a[kw].value)
        assert oa[kw].value != a[kw].value
    assert oa.SOPInstanceUID != ob.SOPInstanceUID
    assert oa.SOPInstanceUID == deid.uid(a.SOPInstanceUID)
    # nested references use the same map
    ref_src = a.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert oa.ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.uid(ref_src)
    assert (
        oa.ReferencedImageSequence[0].ReferencedSOPClassUID
        == a.ReferencedImageSequence[0].ReferencedSOPClassUID
    )
    # every UI value is either a standard class/syntax UID or a 2.25 remap; no source UID survives
    src_uids = {str(e.value) for _, e in _walk(a) if e.VR == "UI" and str(e.value)} | {
        str(a.file_meta.MediaStorageSOPInstanceUID)
    }
    kept_ok = {
        str(a.SOPClassUID),
        *(str(i.ReferencedSOPClassUID) for i in a.ReferencedImageSequence),
    }
    out_uids = {str(e.value) for _, e in _walk(oa) if e.VR == "UI" and str(e.value)}
    out_uids |= {
        str(oa.file_meta[t].value) for t in oa.file_meta.keys() if oa.file_meta[t].VR == "UI"
    }
    assert (src_uids - kept_ok) and not (src_uids - kept_ok) & out_uids
    for uid in out_uids - kept_ok:
        if uid.startswith("2.25."):
            assert len(uid) <= 64 and UID(uid).is_valid
    # different secret -> different UIDs and pseudonyms
    other = Deidentifier(OTHER_SECRET)
    assert other.uid(a.SeriesInstanceUID) != deid.uid(a.SeriesInstanceUID)
    assert other.pseudonym("crlab") != deid.pseudonym("crlab")
    assert deid.uid("1.2.3") != deid.uid("1.2.4")
    assert deid.hash_uid(a.SeriesInstanceUID) == Deidentifier(SECRET).hash_uid(a.SeriesInstanceUID)
    assert re.fullmatch(r"[0-9a-f]{32}", deid.hash_uid(a.SeriesInstanceUID))
    assert other.hash_uid(a.SeriesInstanceUID) != deid.hash_uid(a.SeriesInstanceUID)


def test_pseudonym_format(deid: Deidentifier) -> None:
    ids = ["crlab", "02", "12343@hucheng", "DEV", "crlab ", "1234567890"]
    names = [deid.pseudonym(i) for i in ids]
    assert all(re.fullmatch(r"P[A-Z2-7]{10}", n) for n in names)
    assert names[0] == names[4]  # DICOM trailing padding ignored
    assert len(set(names)) == 5
    assert deid.pseudonym("crlab") == Deidentifier(SECRET).pseudonym("crlab")
    assert "SECRET" not in repr(deid) and SECRET.decode() not in repr(deid)
    with pytest.raises(ValueError):
        deid.pseudonym("  ")
    with pytest.raises(ValueError, match="alphanumeric"):
        deid.deidentify(Dataset(), pseudonym="../x", dosing_date=None)


def test_dates_shifted_exactly(deid: Deidentifier) -> None:
    src = _read("hfs")  # StudyDate 20220407
    dosing = dt.date(2022, 3, 25)
    out = deid.deidentify(src, pseudonym="PX", dosing_date=dosing)
    days = (dt.date(2022, 4, 7) - dosing).days
    assert parse_da(out.StudyDate) == ANCHOR_DATE + dt.timedelta(days=days)
    for kw in ("SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
        new, old = parse_da(out[kw].value), parse_da(src[kw].value)
        assert new is not None and old is not None
        assert (new - ANCHOR_DATE).days == (old - dosing).days
    assert out.StudyTime == src.StudyTime and out.AcquisitionTime == src.AcquisitionTime
    assert "PerformedProcedureStepStartDate" not in out  # X in the basic profile
    # without dosing date: the patient's first study is day 0
    first = dt.date(2022, 4, 1)
    out2 = deid.deidentify(src, pseudonym="PX", dosing_date=None, first_study_date=first)
    assert parse_da(out2.StudyDate) == ANCHOR_DATE + dt.timedelta(days=6)
    assert any("first study" in v for v in out2.DeidentificationMethod)
    # no reference at all: dates emptied/removed, flagged REMOVED, no 113107
    out3 = deid.deidentify(src, pseudonym="PX", dosing_date=None)
    assert out3.StudyDate == "" and out3.StudyTime == ""
    assert "SeriesDate" not in out3 and "AcquisitionDate" not in out3
    assert out3.LongitudinalTemporalInformationModified == "REMOVED"
    assert [i.CodeValue for i in out3.DeidentificationMethodCodeSequence] == ["113100"]


def test_enhanced_frame_datetimes_shifted(deid: Deidentifier) -> None:
    src = _read("xa30")  # AcquisitionDateTime 20220711120517.042500, 96 frames
    dosing = dt.date(2022, 7, 1)
    out = deid.deidentify(src, pseudonym="PX", dosing_date=dosing)
    assert out.AcquisitionDateTime == "20000111120517.042500"
    frames = out.PerFrameFunctionalGroupsSequence
    assert len(frames) == int(src.NumberOfFrames) == 96
    for f_out, f_src in zip(frames, src.PerFrameFunctionalGroupsSequence, strict=True):
        a = f_out.FrameContentSequence[0].FrameAcquisitionDateTime
        b = f_src.FrameContentSequence[0].FrameAcquisitionDateTime
        assert a[:8] == "20000111" and a[8:] == b[8:]
    assert out.DeviceSerialNumber == "REMOVED"  # Type 1 in Enhanced General Equipment: D
    assert out.DimensionOrganizationSequence[0].DimensionOrganizationUID == deid.uid(
        src.DimensionOrganizationSequence[0].DimensionOrganizationUID
    )


@pytest.mark.parametrize("name", ["ts-jpeg-lossless", "ge-epi", "brain-t1-3d"])
def test_pixels_untouched_and_file_rereads(deid: Deidentifier, name: str) -> None:
    src = _read(name)
    out = deid.deidentify(src, pseudonym="PX", dosing_date=dt.date(2020, 1, 1))
    assert out.PixelData == src.PixelData
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    back = pydicom.dcmread(buf)
    assert back.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert back.SOPInstanceUID == out.SOPInstanceUID
    np.testing.assert_array_equal(back.pixel_array, src.pixel_array)


def test_curves_overlays_and_hostile_text_removed(deid: Deidentifier) -> None:
    src = _read("ge-epi")
    src.add_new(0x60000010, "US", 4)  # overlay rows
    src.add_new(0x60003000, "OW", b"\x01\x02" * 8)  # overlay data
    src.add_new(0x60000022, "LO", "Doe^Jane overlay")  # overlay description
    src.add_new(0x50000005, "US", 1)  # curve dimensions (retired)
    src.SeriesDescription = "../../etc/passwd"
    src.ProtocolName = "Doe^Jane"
    src.ClinicalTrialTimePointID = "M3"
    src.ClinicalTrialSubjectID = "SUBJ-0042"
    block = src.private_block(0x0077, "PHITEST", create=True)
    block.add_new(0x01, "LO", "Doe^Jane")
    out = deid.deidentify(src, pseudonym="PX", dosing_date=None)
    assert not any(e.tag.group in (0x5000, 0x6000) for e in out)
    assert "SeriesDescription" not in out and "ProtocolName" not in out
    assert out.ClinicalTrialTimePointID == "M3"  # the visit label is kept
    assert out.ClinicalTrialSubjectID == "PX"
    assert not any(e.tag.is_private for e in out)


def _record(sop: str, burned: str = "", pixels: bool = True) -> InstanceRecord:
    return InstanceRecord(
        path="x.dcm",
        sop_instance_uid="1.2.3",
        sop_class_uid=sop,
        series_instance_uid="1.2",
        study_instance_uid="1.1",
        patient_id="p",
        study_date="",
        study_time="",
        series_number=1,
        instance_number=1,
        acquisition_number=None,
        echo_number=None,
        n_frames=1,
        rows=2,
        columns=2,
        pixel_spacing=None,
        image_orientation=None,
        image_position=None,
        image_type=("DERIVED", "SECONDARY"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        has_pixel_data=pixels,
        tags={"BurnedInAnnotation": burned} if burned else {},
    )


def test_exclusion_rules() -> None:
    mr, sc = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
    # the real DERIVED\SECONDARY MR Image Storage series must convert
    real = _read("brain-t1-3d")
    assert list(real.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert exclusion_reason(real) is None
    assert exclusion_reason(_read("xa30")) is None
    assert exclusion_reason(_record(mr)) is None
    cases = {
        sc: "secondary capture",
        sc + ".4": "secondary capture",  # multiframe true colour SC
        sc + ".2": "secondary capture",
        "1.2.840.10008.5.1.4.1.1.88.22": "structured report",
        "1.2.840.10008.5.1.4.1.1.88.59": "key object",
        "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
        "1.2.840.10008.5.1.4.1.1.66": "raw data",
        "1.2.840.10008.5.1.4.1.1.4.2": "spectroscopy",
        "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated document",
        "1.3.12.2.1107.5.9.1": "private",
        "1.2.840.10008.5.1.4.1.1.2": "not an mr image",
    }
    for sop, word in cases.items():
        ds = Dataset()
        ds.SOPClassUID = sop
        reason = exclusion_reason(ds)
        assert reason is not None and word in reason.lower(), (sop, reason)
        assert exclusion_reason(_record(sop)) == reason
    burned = Dataset()
    burned.SOPClassUID = mr
    burned.BurnedInAnnotation = "YES"
    assert "burned-in" in (exclusion_reason(burned) or "")
    assert "burned-in" in (exclusion_reason(_record(mr, burned="YES")) or "")
    burned.BurnedInAnnotation = "NO"
    assert exclusion_reason(burned) is None
    assert "no pixel data" in (exclusion_reason(_record(mr, pixels=False)) or "")
    assert exclusion_reason({"SOPClassUID": mr, "BurnedInAnnotation": "YES"}) is not None
    assert exclusion_reason({"SOPClassUID": sc + ".1"}) is not None
    assert exclusion_reason(Dataset()) is not None


def test_load_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("MRI_SAFETY_SECRET", raising=False)
    with caplog.at_level(logging.WARNING):
        first = load_secret(None)
    target = tmp_path / "cfg" / "mri-safety" / "site-secret"
    assert target.exists() and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "new site secret" in caplog.text and first.decode() not in caplog.text
    assert len(first) >= 32
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_secret(None) == first  # reused, not recreated
    assert "new site secret" not in caplog.text
    monkeypatch.setenv("MRI_SAFETY_SECRET", "env-secret-0123456789")
    assert load_secret(None) == b"env-secret-0123456789"
    explicit = tmp_path / "my-secret"
    explicit.write_bytes(b"file-secret-abcdefghij\n")
    os.chmod(explicit, 0o600)
    assert load_secret(explicit) == b"file-secret-abcdefghij"
    with pytest.raises(ValueError, match="not found"):
        load_secret(tmp_path / "missing")
    explicit.write_bytes(b"short")
    with pytest.raises(ValueError, match="too short"):
        load_secret(explicit)
    monkeypatch.setenv("MRI_SAFETY_SECRET", "short")
    with pytest.raises(ValueError, match="MRI_SAFETY_SECRET"):
        load_secret(None)
    with pytest.raises(ValueError):
        Deidentifier(b"short")


def test_scrub_text() -> None:
    assert scrub_text("t1_mprage Doe^Jane 20220407", known=["Doe^Jane"]) == "t1mprage"
    assert scrub_text("../../etc/passwd") == "etcpasswd"
    assert scrub_text("JANE doe scan", known=["Doe^Jane"]) == "scan"
    assert scrub_text("Zoë ax t2", max_len=4) == "Zoea"
    assert re.fullmatch(r"[A-Za-z0-9]*", scrub_text('a/b\\c:d*e?f"g<h>i|j\x00k'))


def test_write_deidentified_series(deid: Deidentifier, tmp_path: Path) -> None:
    sources = [_read("hfs", i) for i in range(3)]
    sc = _read("hfs", 3)
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    paths = write_deidentified_series(
        [*sources, sc], tmp_path / "dcm", deid, pseudonym="PX", dosing_date=dt.date(2022, 4, 1)
    )
    assert len(paths) == 3
    for src, path in zip(sources, paths, strict=True):
        assert path.name == deid.uid(src.SOPInstanceUID) + ".dcm"
        back = pydicom.dcmread(path)
        assert back.PatientID == "PX" and back.StudyDate == "20000107"
        assert back.SeriesInstanceUID == deid.uid(src.SeriesInstanceUID)
    names = " ".join(p.name for p in (tmp_path / "dcm").iterdir())
    assert "1.3.12.2.1107" not in names and "HFS" not in names


def test_date_shift_value_forms() -> None:
    from mri_safety.dicom.deid import DateShift

    shift = DateShift.from_reference(dt.date(2022, 4, 1))
    assert shift.offset_days == (ANCHOR_DATE - dt.date(2022, 4, 1)).days
    assert shift.shift_da("20220407") == "20000107"
    assert shift.shift_da("2022.04.07") == "20000107"  # old ACR-NEMA form
    assert shift.shift_da("20221341") == ""  # invalid: emptied, never kept
    # the UTC offset (site time zone) is dropped, the time of day kept
    assert shift.shift_dt("20220407120517.0425+0200") == "20000107120517.0425"
    assert shift.shift_dt("2022") == ""  # less than day precision: emptied
    assert DateShift.from_reference(None, dt.date(2022, 4, 7)).shift_da("20220407") == "20000101"
    assert not DateShift.from_reference(None, None).active
