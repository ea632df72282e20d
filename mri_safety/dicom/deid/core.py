"""De-identification of one DICOM dataset: :class:`Deidentifier`.

Applies PS3.15 Table E.1-1 (basic profile) with the Retain Longitudinal
Temporal Information with Modified Dates option (when a reference date is
known), removes private tags and curves/overlays, remaps UIDs
deterministically and replaces the patient's name and ID by a keyed
pseudonym. See ``docs/deidentification.md`` for exactly what is kept.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from mri_safety.dicom.deid.dates import ANCHOR_DATE, DateShift
from mri_safety.dicom.deid.exclusion import exclusion_reason
from mri_safety.dicom.deid.keys import hash_uid_for, pseudonym_for, remap_uid
from mri_safety.dicom.deid.profile import Context, ProfileTable, apply_profile, load_table

log = logging.getLogger(__name__)

METHOD_VERSION = "mri-safety deid v1"

#: CID 7050 codes (scheme DCM) written into DeidentificationMethodCodeSequence.
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")

_PSEUDONYM = re.compile(r"^[A-Za-z0-9]{1,64}$")


def _t(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


class Deidentifier:
    """Keyed, deterministic de-identification with one site secret.

    ``secret`` (>= 16 bytes, see :func:`load_secret`) keys every pseudonym,
    UID and UID hash: the same input always gives the same output for one
    secret, and different secrets give unrelated outputs. The secret is
    kept private to this object (not in ``repr``) and never written out.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        anchor: dt.date = ANCHOR_DATE,
        table: ProfileTable | None = None,
    ) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("site secret must be bytes of length >= 16")
        self._secret = bytes(secret)
        self._uid_cache: dict[str, str] = {}
        self.anchor = anchor
        self.table = table or load_table()

    def __repr__(self) -> str:
        return f"Deidentifier(anchor={self.anchor.isoformat()}, table={self.table.source!r})"

    def pseudonym(self, patient_id: str) -> str:
        """BIDS-safe pseudonym (``P`` + 10 base32 characters) for a patient ID."""
        return pseudonym_for(self._secret, patient_id)

    def uid(self, source_uid: str) -> str:
        """Deterministic ``2.25.<int>`` replacement for ``source_uid`` (<= 64 chars)."""
        key = str(source_uid).strip(" \x00")
        new = self._uid_cache.get(key)
        if new is None:
            new = remap_uid(self._secret, key)
            self._uid_cache[key] = new
        return new

    def hash_uid(self, uid: str) -> str:
        """Keyed 32-hex-character hash of a source UID, for provenance in sidecars."""
        return hash_uid_for(self._secret, uid)

    def date_shift(
        self, dosing_date: dt.date | None, first_study_date: dt.date | None = None
    ) -> DateShift:
        """The per-patient offset used by :meth:`deidentify`."""
        return DateShift.from_reference(dosing_date, first_study_date, self.anchor)

    def deidentify(
        self,
        ds: Dataset,
        *,
        pseudonym: str,
        dosing_date: dt.date | None,
        first_study_date: dt.date | None = None,
    ) -> Dataset:
        """Return a de-identified deep copy of ``ds`` (``ds`` is not modified).

        ``pseudonym`` becomes PatientName, PatientID (and ClinicalTrialSubjectID
        when present); it must be alphanumeric (use :meth:`pseudonym`).
        Dates are shifted by whole days so that ``dosing_date`` maps to the
        anchor (2000-01-01); without a dosing date, pass the date of the
        patient's earliest study as ``first_study_date`` (the same value for
        every series of that patient, or their day differences break). With
        neither, dates are removed/emptied per the basic profile and
        LongitudinalTemporalInformationModified is ``REMOVED``.
        Pixel data is not touched (see :func:`exclusion_reason` for objects
        that may carry identifying pixels).
        """
        if not _PSEUDONYM.match(pseudonym):
            raise ValueError(f"pseudonym {pseudonym!r} is not a 1-64 character alphanumeric label")
        shift = self.date_shift(dosing_date, first_study_date)
        out = copy.deepcopy(ds)
        out.remove_private_tags()
        ctx = Context(
            table=self.table,
            shift=shift,
            uid_map=self.uid,
            replacements={
                _t("PatientName"): pseudonym,
                _t("PatientID"): pseudonym,
                _t("ClinicalTrialSubjectID"): pseudonym,
            },
        )
        apply_profile(out, ctx)
        out.PatientName = pseudonym
        out.PatientID = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.LongitudinalTemporalInformationModified = "MODIFIED" if shift.active else "REMOVED"
        out.DeidentificationMethod = self._method_text(shift)
        out.DeidentificationMethodCodeSequence = self._method_codes(shift)
        _reset_file_meta(out)
        return out

    def _method_text(self, shift: DateShift) -> list[str]:
        lines = [f"PS3.15 E.1-1 Basic Profile ({self.table.source.split()[-1]})"]
        if shift.active:
            ref = "dosing day" if shift.reference == "dosing" else "first study"
            lines.append(f"Modified Dates: {self.anchor.isoformat()} = {ref}; times kept")
        else:
            lines.append("Dates removed (no reference date)")
        lines += [
            "Private tags, curves, overlays removed; UIDs remapped",
            "ClinicalTrialTimePointID kept",
            METHOD_VERSION,
        ]
        return lines

    @staticmethod
    def _method_codes(shift: DateShift) -> list[Dataset]:
        codes = [CODE_BASIC_PROFILE] + ([CODE_MODIFIED_DATES] if shift.active else [])
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        return items


def _reset_file_meta(ds: Dataset) -> None:
    """Replace the file meta group (it holds the old SOP Instance UID and the
    source application's AE title) and the 128-byte preamble."""
    old = getattr(ds, "file_meta", None)
    syntax = getattr(old, "TransferSyntaxUID", None) if old is not None else None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MRI_SAFETY_1"
    ds.file_meta = meta
    if hasattr(ds, "preamble"):
        ds.preamble = b"\x00" * 128
    if hasattr(ds, "filename"):
        ds.filename = None


def write_deidentified_series(
    datasets: Iterable[Dataset],
    out_dir: Path,
    deidentifier: Deidentifier,
    *,
    pseudonym: str,
    dosing_date: dt.date | None,
    first_study_date: dt.date | None = None,
) -> list[Path]:
    """De-identify and write each dataset as ``out_dir/<new SOPInstanceUID>.dcm``.

    File names never come from source names or header text. Objects that
    :func:`exclusion_reason` rejects are skipped with a warning (the reason
    has no PHI). Returns the written paths in input order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for ds in datasets:
        reason = exclusion_reason(ds, mr_only=False)
        if reason is not None:
            log.warning("not writing a de-identified copy: %s", reason)
            continue
        clean = deidentifier.deidentify(
            ds, pseudonym=pseudonym, dosing_date=dosing_date, first_study_date=first_study_date
        )
        sop_uid = str(clean.get("SOPInstanceUID", "")).strip()
        if not sop_uid:
            log.warning("not writing a de-identified copy: no SOPInstanceUID")
            continue
        path = out_dir / f"{sop_uid}.dcm"
        clean.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
