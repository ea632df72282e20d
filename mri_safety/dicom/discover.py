"""Find DICOM instances in a tree and index their headers (no pixel data).

A site's export is a messy tree: nested folders, files without extensions,
DICOMDIR media indexes, gzip-compressed ``.dcm.gz`` files, stray PDFs and
thumbnails, duplicated instances. :func:`discover` walks it, reads every
candidate file's header with ``pydicom.dcmread(stop_before_pixels=True)`` (in a
process pool for large trees) and returns one :class:`InstanceRecord` per SOP
instance plus a :class:`Problem` for everything it skipped, with the reason.

Example
-------
>>> from mri_safety.dicom.discover import discover
>>> result = discover("../shared/data/dicom/patient-positions/HFS")  # doctest: +SKIP
>>> len(result.instances), len(result.problems)  # doctest: +SKIP
(35, 0)
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

from mri_safety.dicom.records import InstanceRecord, Problem

log = logging.getLogger(__name__)

#: Attributes copied into ``InstanceRecord.tags`` (classification, QC, sidecar,
#: visits). Identity attributes are copied only where a later stage needs them
#: (PatientID for grouping/pseudonyms, dates for visits); de-identification
#: decides what leaves the site.
ACQUISITION_KEYWORDS: tuple[str, ...] = (
    "Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "MagneticFieldStrength", "DeviceSerialNumber", "StationName", "InstitutionName",
    "BodyPartExamined", "PatientPosition", "SeriesDescription", "ProtocolName",
    "SequenceName", "ScanningSequence", "SequenceVariant", "ScanOptions",
    "MRAcquisitionType", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
    "EchoTrainLength", "NumberOfAverages", "ImagingFrequency", "PixelBandwidth",
    "SliceThickness", "SpacingBetweenSlices", "PercentPhaseFieldOfView",
    "AcquisitionMatrix", "InPlanePhaseEncodingDirection", "ReceiveCoilName",
    "ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume",
    "ContrastBolusStartTime", "ContrastBolusIngredient", "DiffusionBValue",
    "DiffusionGradientOrientation", "BurnedInAnnotation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel",
    "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "ContentDate", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
    "ClinicalTrialTimePointID", "ClinicalTrialSubjectID", "StudyDescription",
    "FrameOfReferenceUID", "SliceLocation", "TemporalPositionIdentifier",
    "NumberOfTemporalPositions", "TriggerTime", "ImagesInAcquisition",
    # enhanced MR (multi-frame) equivalents, lifted from functional groups
    "EchoPulseSequence", "InversionRecovery", "Spoiling", "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence", "MagnetizationTransfer", "DiffusionDirectionality",
    "EffectiveEchoTime", "InversionTimes", "FrameType", "PulseSequenceName",
    "ParallelAcquisition", "ParallelAcquisitionTechnique",
)

_WANTED = frozenset(ACQUISITION_KEYWORDS) | {
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
}

#: (group, element) of the pixel data family: PixelData, FloatPixelData,
#: DoubleFloatPixelData.
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class DiscoveryResult:
    """Instances found (duplicates removed, sorted by path) and skipped files."""

    instances: list[InstanceRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _plain(value: Any) -> Any:
    """Convert pydicom values to plain, picklable Python types."""
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, DSfloat | float):
        return float(value)
    if isinstance(value, IS | int):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace")
    if isinstance(value, Dataset):
        return None
    return str(value) if value is not None else None


def _lift_functional_groups(ds: Dataset, tags: dict[str, Any]) -> None:
    """Copy wanted attributes found in the shared or first per-frame functional
    group (enhanced multi-frame objects) into ``tags`` unless already present.

    ``EffectiveEchoTime`` is also exposed as ``EchoTime`` and the first of
    ``InversionTimes`` as ``InversionTime`` so rules read one keyword.
    """
    groups: list[Dataset] = []
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_kw)
        if seq:
            groups.append(seq[0])
    for group in groups:
        for macro in group:
            if macro.VR != "SQ" or not macro.value:
                continue
            for elem in macro.value[0]:
                kw = elem.keyword
                if kw in _WANTED and kw not in tags and elem.VR != "SQ":
                    tags[kw] = _plain(elem.value)
    if "EchoTime" not in tags and "EffectiveEchoTime" in tags:
        tags["EchoTime"] = tags["EffectiveEchoTime"]
    inv = tags.get("InversionTimes")
    if "InversionTime" not in tags and inv:
        tags["InversionTime"] = inv[0] if isinstance(inv, list) else inv


def _followed_by_pixels(fp: Any, ds: Dataset) -> bool:
    """True when the bytes after a ``stop_before_pixels`` read are a pixel data
    element. pydicom rewinds to the start of the element it stopped at, so the
    next 4 bytes are its tag (group, element) in the data set's byte order."""
    raw = fp.read(4)
    if len(raw) < 4:
        return False
    little = getattr(ds, "is_little_endian", True)
    if little is None:
        little = True
    group, elem = struct.unpack("<HH" if little else ">HH", raw)
    return (group, elem) in _PIXEL_TAGS


class NotDicomGzip(InvalidDicomError):
    """A gzip file whose content is not a DICOM Part 10 file (e.g. .nii.gz)."""


def _open(path: Path) -> io.BufferedIOBase | io.BytesIO:
    """Open a file, transparently decompressing gzip members (``.dcm.gz``).

    A gzip file is only decompressed in full when its first 132 bytes carry
    the DICOM preamble magic ``DICM``, so a large ``.nii.gz`` is not inflated
    just to be skipped.
    """
    f = open(path, "rb")  # noqa: SIM115 - returned to caller
    magic = f.read(2)
    f.seek(0)
    if magic != b"\x1f\x8b":
        return f
    with f, gzip.GzipFile(fileobj=f) as gz:
        head = gz.read(132)
        if head[128:132] != b"DICM":
            raise NotDicomGzip(f"{path}: gzip file without a DICOM Part 10 member")
        return io.BytesIO(head + gz.read())


def read_dataset(rec: InstanceRecord | str | Path, *, pixels: bool = True) -> Dataset:
    """Read one instance (``.dcm.gz`` included). ``pixels=False`` reads the
    header only. Raises :class:`InvalidDicomError` or ``OSError`` naming the file."""
    path = Path(rec.path if isinstance(rec, InstanceRecord) else rec)
    with _open(path) as fp:
        try:
            return pydicom.dcmread(fp, stop_before_pixels=not pixels)
        except InvalidDicomError:
            fp.seek(0)
            return pydicom.dcmread(fp, stop_before_pixels=not pixels, force=True)


def _as_floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _record_from_dataset(path: Path, ds: Dataset, has_pixels: bool) -> InstanceRecord:
    tags: dict[str, Any] = {}
    for kw in _WANTED:
        if kw in ds:
            elem = ds[kw]
            if elem.VR != "SQ":
                tags[kw] = _plain(elem.value)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        _lift_functional_groups(ds, tags)

    def _int(kw: str) -> int | None:
        v = ds.get(kw)
        try:
            return int(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None

    echo = ds.get("EchoNumbers")
    if isinstance(echo, MultiValue):
        echo = echo[0] if len(echo) else None
    iop = _as_floats(tags.get("ImageOrientationPatient") or (), 6)
    ipp = _as_floats(tags.get("ImagePositionPatient") or (), 3)
    ps = _as_floats(tags.get("PixelSpacing") or (), 2)
    ts = ""
    if getattr(ds, "file_meta", None) is not None:
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    image_type = ds.get("ImageType") or tags.get("FrameType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return InstanceRecord(
        path=str(path),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        study_date=str(ds.get("StudyDate", "")),
        study_time=str(ds.get("StudyTime", "")),
        series_number=_int("SeriesNumber"),
        instance_number=_int("InstanceNumber"),
        acquisition_number=_int("AcquisitionNumber"),
        echo_number=int(echo) if echo not in (None, "") else None,
        n_frames=_int("NumberOfFrames") or 1,
        rows=_int("Rows"),
        columns=_int("Columns"),
        pixel_spacing=(ps[0], ps[1]) if ps else None,
        image_orientation=iop,
        image_position=(ipp[0], ipp[1], ipp[2]) if ipp else None,
        image_type=tuple(str(t).upper() for t in image_type),
        transfer_syntax_uid=ts,
        has_pixel_data=has_pixels,
        tags=tags,
    )


def read_header(path: Path) -> InstanceRecord | Problem:
    """Read one file's header. Returns a record, or a Problem saying why the
    file is not a usable DICOM image instance (never raises for bad files)."""
    try:
        if path.stat().st_size == 0:
            return Problem(str(path), "empty file (0 bytes): skipped", "warning")
        try:
            opened = _open(path)
        except NotDicomGzip:
            return Problem(str(path), "gzip file without DICOM content: skipped", "warning")
        with opened as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                # No 128-byte preamble + "DICM": accept only if it parses as a
                # data set that carries the identifying UIDs (old ACR-NEMA style
                # files do); anything else is not DICOM.
                fp.seek(0)
                try:
                    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                except Exception:
                    return Problem(str(path), "not a DICOM file: skipped", "warning")
                if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
                    return Problem(str(path), "not a DICOM file: skipped", "warning")
            has_pixels = _followed_by_pixels(fp, ds)
    except (OSError, EOFError, ValueError, struct.error, KeyError, TypeError) as exc:
        return Problem(str(path), f"unreadable DICOM header ({type(exc).__name__}: {exc})")
    except Exception as exc:  # pydicom raises many types on corrupt input
        return Problem(str(path), f"unreadable DICOM header ({type(exc).__name__}: {exc})")
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return Problem(str(path), "DICOMDIR media index: its referenced files are read", "info")
    if "SOPInstanceUID" not in ds:
        return Problem(str(path), "DICOM file without SOPInstanceUID: skipped")
    return _record_from_dataset(path, ds, has_pixels)


def _dicomdir_files(path: Path) -> list[Path]:
    """Files referenced by a DICOMDIR (ReferencedFileID is relative to it)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        log.warning("%s: unreadable DICOMDIR (%s)", path, exc)
        return []
    out = []
    for rec in ds.get("DirectoryRecordSequence", []):
        ref = rec.get("ReferencedFileID")
        if ref:
            parts = [ref] if isinstance(ref, str) else list(ref)
            out.append(path.parent.joinpath(*[str(p) for p in parts]))
    return out


def iter_candidate_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (or ``root`` itself), plus files
    referenced by DICOMDIRs, each once, in sorted order.

    Symbolic links to folders are followed (exports and trial folders are often
    assembled from links; ``os.walk`` skips them by default, and a tree of links
    then looks empty); a folder reached twice, e.g. through a link to one of its
    parents, is walked once."""
    root = Path(root)
    if root.is_file():
        files = {root}
        if root.name.upper() == "DICOMDIR":
            files.update(p for p in _dicomdir_files(root) if p.is_file())
        yield from sorted(files)
        return
    seen: set[Path] = set()
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p in seen or not p.is_file():
                continue
            seen.add(p)
            yield p
            if name.upper() == "DICOMDIR":
                for ref in _dicomdir_files(p):
                    if ref not in seen and ref.is_file():
                        seen.add(ref)
                        yield ref


def _read_many(paths: list[Path]) -> list[InstanceRecord | Problem]:
    return [read_header(p) for p in paths]


def _chunks(items: list[Path], n: int) -> Iterable[list[Path]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def discover(root: str | Path, workers: int | None = None) -> DiscoveryResult:
    """Index every DICOM instance under ``root`` (headers only).

    Parameters
    ----------
    root
        A folder, a single file, or a DICOMDIR.
    workers
        Processes used to parse headers. ``None`` = ``min(4, cpu count)`` for
        trees of more than 500 files, else serial: a pool costs ~0.3-1 s to
        start and feed. Measured on 2 cores: the 387-file brain series
        0.64-0.69 s either way, one synthetic patient's 557 files 0.95 s serial
        vs 0.51 s with 2 processes. ``1`` forces serial.

    Returns
    -------
    DiscoveryResult
        ``instances`` sorted by path with duplicate SOPInstanceUIDs kept once
        (the first path wins; each dropped copy gets an ``info`` problem), and
        ``problems`` for every skipped file with its reason.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    paths = list(iter_candidate_files(root))
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(paths) > 500 else 1
    results: list[InstanceRecord | Problem] = []
    if workers > 1:
        size = max(16, len(paths) // (workers * 4))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_read_many, _chunks(paths, size)):
                results.extend(part)
    else:
        results = _read_many(paths)

    out = DiscoveryResult()
    first_path: dict[str, str] = {}
    for item in results:
        if isinstance(item, Problem):
            if item.level == "error":
                log.warning("%s", item)
            else:
                log.info("%s", item)
            out.problems.append(item)
            continue
        uid = item.sop_instance_uid
        if uid in first_path:
            out.problems.append(
                Problem(item.path, f"duplicate instance of {first_path[uid]}: kept once", "info")
            )
            continue
        first_path[uid] = item.path
        out.instances.append(item)
    return out
