"""No PHI in any output: the issue's bar for de-identification.

Real series are copied to a temporary tree and every PS3.15 Table E.1-1
attribute present in them (at any depth, sequences included) is overwritten
with a unique marker: text VRs get ``PHIMARK<n>`` (descriptions keep their
real text in front so classification still works), dates get unusual unique
dates in 1937 (birth date 1913), decimal strings unusual numbers; the source
UIDs themselves are the UID markers. A few commonly present identifying
attributes that these files lack are added, plus a private tag. Then the
whole tree is converted with ``write_dicom=True`` and every output file name
and every output byte (gzip members also decompressed) is searched,
case-insensitively, for every marker in UTF-8 and Latin-1: zero hits.

Not injected, by design (see docs/deidentification.md): times of day (TM,
kept: dates move by whole days), ClinicalTrialTimePointID (the visit label,
kept), binary numbers (US/UL/SS/..., not searchable as text) and AS ages.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from conftest import need_data
from pydicom.dataset import Dataset

from mri_safety.dicom.deid import load_table
from mri_safety.dicom.deid.profile import RETAINED
from pipelines.convert import convert_tree

SECRET = b"phi-test-secret-0123456789abcdef"
STUDY_DATE = dt.date(1937, 2, 13)
DOSING_DATE = dt.date(1937, 2, 16)  # the study is 3 days before dosing: baseline
BIRTH_DATE = "19130527"

#: Text VRs and their maximum length (PS3.5 6.2).
TEXT_VR_LEN = {
    "AE": 16,
    "CS": 16,
    "SH": 16,
    "LO": 64,
    "PN": 64,
    "ST": 1024,
    "LT": 10240,
    "UT": 10240,
    "UC": 10240,
}
#: Descriptions keep their real content (classification reads them) plus a marker.
DESCRIPTIONS = {
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "PerformedProcedureStepDescription",
    "RequestedProcedureDescription",
}
#: Identifying attributes added when absent (all listed in Table E.1-1).
ADDED = (
    "OperatorsName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "PatientAddress",
    "OtherPatientIDs",
    "ImageComments",
    "AdditionalPatientHistory",
    "PatientComments",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "DeviceSerialNumber",
    "StudyDescription",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "PatientBirthName",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "PerformedProcedureStepDescription",
    "PatientTelephoneNumbers",
    "MilitaryRank",
    "BranchOfService",
    "Occupation",
    "EthnicGroup",
    "PatientReligiousPreference",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientWeight",
    "PatientSize",
)

# (name in tmp tree, source under data/dicom, files to take or None for all)
SOURCES = [
    ("a", ("patient-positions", "HFS"), None),
    ("b", ("transfer-syntaxes",), ["5.dcm"]),
    ("c", ("siemens-xa30-enhanced", "5_anat-T1w_acq-tfl"), None),
]


@dataclass
class Markers:
    """marker bytes -> what was injected where (for readable failures)."""

    where: dict[str, str] = field(default_factory=dict)
    patient_ids: list[str] = field(default_factory=list)
    _n: int = 0

    def text(self, where: str) -> str:
        self._n += 1
        m = f"PHIMARK{self._n:04d}"
        self.where[m] = where
        return m

    def number(self) -> int:
        self._n += 1
        return self._n

    def add(self, value: str, where: str) -> None:
        if value and len(value) >= 8:
            self.where.setdefault(value, where)


def _walk(ds: Dataset) -> Iterator[tuple[Dataset, pydicom.DataElement]]:
    for elem in list(ds):
        yield ds, elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


class Injector:
    """Same marker for the same attribute across the instances of one series
    (so the series still groups), distinct between series and attributes."""

    def __init__(self, markers: Markers, series: str) -> None:
        self.m = markers
        self.series = series
        self.values: dict[str, str] = {}
        self.next_date = dt.date(1937, 1, 20)

    def _value(self, kw: str, vr: str, original: str) -> str | None:
        key = f"{kw}/{vr}"
        if key in self.values:
            return self.values[key]
        where = f"{self.series}:{kw}"
        value: str | None
        if kw == "PatientName":
            value = self.m.text(where) + "^Zoë"
            self.m.where[value] = where
        elif kw in DESCRIPTIONS:
            value = (original.strip()[:40] + " " + self.m.text(where)).strip()
        elif kw == "PatientBirthDate":
            value = BIRTH_DATE
        elif kw == "StudyDate":
            value = STUDY_DATE.strftime("%Y%m%d")
        elif vr in ("DA", "DT"):
            self.next_date += dt.timedelta(days=1)
            value = self.next_date.strftime("%Y%m%d") + ("120517.042500" if vr == "DT" else "")
        elif vr in TEXT_VR_LEN:
            value = self.m.text(where)
        elif vr == "DS":
            value = f"9{self.m.number():04d}.31337"
            self.m.where[value] = where
        elif vr == "IS":
            value = f"97{self.m.number():04d}31"
            self.m.where[value] = where
        else:
            value = None  # TM, AS, binary numbers, UI (handled separately), SQ
        if value is not None and (vr in ("DA", "DT") or kw == "PatientBirthDate"):
            day = value[:8]
            self.m.where[day] = where
            self.m.where[f"{day[:4]}-{day[4:6]}-{day[6:8]}"] = where
        if kw == "PatientID":
            self.m.patient_ids.append(value or "")
        self.values[key] = value or ""
        return value

    def inject(self, ds: Dataset) -> None:
        table = load_table()
        for kw in ADDED:
            if kw not in ds:
                setattr(ds, kw, "")
        for container, elem in _walk(ds):
            tag = int(elem.tag)
            if elem.tag.is_private or tag in RETAINED or table.action(tag) is None:
                continue
            if elem.VR == "UI":
                for uid in [elem.value] if isinstance(elem.value, str) else list(elem.value):
                    self.m.add(str(uid), f"{self.series}:{elem.keyword}")
                continue
            value = self._value(elem.keyword or str(elem.tag), elem.VR, str(elem.value or ""))
            if value is None:
                continue
            container[elem.tag].value = value[: TEXT_VR_LEN.get(elem.VR, 64)]
        self.m.add(str(ds.file_meta.MediaStorageSOPInstanceUID), f"{self.series}:meta")
        block = ds.private_block(0x0071, "PHI TEST CREATOR", create=True)
        block.add_new(0x01, "LO", self._private_marker())
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so the non-ASCII name is valid

    def _private_marker(self) -> str:
        if "private" not in self.values:
            self.values["private"] = self.m.text(f"{self.series}:private tag")
        return self.values["private"]


def _build_tree(root: Path) -> tuple[Markers, int]:
    markers = Markers()
    n_files = 0
    for name, rel, only in SOURCES:
        src_dir = need_data("dicom", *rel)
        files = sorted(src_dir / f for f in only) if only else sorted(src_dir.glob("*.dcm"))
        inj = Injector(markers, name)
        dest = root / name
        dest.mkdir(parents=True)
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            # real identifying values (descriptions excepted: their real text is
            # kept in the input on purpose, the appended marker tracks them)
            for kw in (
                "PatientName",
                "PatientID",
                "InstitutionName",
                "InstitutionAddress",
                "StationName",
                "DeviceSerialNumber",
                "PerformedProcedureStepID",
            ):
                markers.add(str(ds.get(kw, "") or ""), f"{name}:original {kw}")
            inj.inject(ds)
            ds.save_as(dest / f"{i:04d}.dcm", enforce_file_format=True)  # neutral names
            n_files += 1
    return markers, n_files


def _forms(marker: str) -> set[bytes]:
    out = {marker.lower().encode("utf-8")}
    try:
        out.add(marker.lower().encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


def _scan(out: Path, markers: Markers) -> list[str]:
    needles = [(m, form) for m in markers.where for form in _forms(m)]
    hits: list[str] = []
    n_files = 0
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out)).lower()
        for m, _ in needles:
            if m.lower() in rel:
                hits.append(f"file name {rel}: {m} ({markers.where[m]})")
        if not path.is_file():
            continue
        n_files += 1
        blobs = [path.read_bytes()]
        if path.suffix == ".gz":
            blobs.append(gzip.decompress(blobs[0]))
        for blob in blobs:
            low = blob.lower()
            for m, form in needles:
                if form in low:
                    hits.append(f"{rel}: {m} ({markers.where[m]})")
    assert n_files > 0
    return sorted(set(hits))


@pytest.mark.parametrize("with_enrolment", [True, False], ids=["dosing-date", "no-enrolment"])
def test_no_marker_in_any_output(tmp_path: Path, with_enrolment: bool) -> None:
    src = tmp_path / "site_export"
    markers, n_files = _build_tree(src)
    assert len(markers.where) > 100  # many attributes really were marked
    enrolment = None
    if with_enrolment:
        enrolment = tmp_path / "enrolment.csv"
        rows = [f"{pid},{DOSING_DATE.isoformat()}" for pid in sorted(set(markers.patient_ids))]
        enrolment.write_text("patient_id,dosing_date\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    report = convert_tree(src, out, enrolment=enrolment, secret=SECRET, write_dicom=True, workers=1)

    # the conversion really ran: every series converted, every instance copied
    statuses = {s.source: (s.status, s.errors) for s in report.series}
    assert len(report.converted) == len(SOURCES), statuses
    niftis = list(out.rglob("*.nii.gz"))
    assert len(niftis) == len(SOURCES)
    copies = list(out.rglob("*.dcm"))
    assert len(copies) == n_files
    for s in report.converted:
        assert s.subject and s.subject not in markers.patient_ids
        for pid in [*markers.patient_ids, "crlab", "12343@hucheng"]:
            assert pid.lower() not in s.subject.lower()

    hits = _scan(out, markers)
    assert hits == [], f"{len(hits)} PHI markers found in outputs:\n" + "\n".join(hits[:40])

    # the copies are real DICOM, de-identified, with dates shifted or removed
    back = pydicom.dcmread(copies[0])
    assert back.PatientIdentityRemoved == "YES"
    assert back.StudyInstanceUID.startswith("2.25.")
    if with_enrolment:
        assert back.StudyDate == "19991229"  # 3 days before 2000-01-01 = dosing day
    shutil.rmtree(src)
