"""Acquisition parameters for the BIDS JSON sidecar, in BIDS units, without PHI.

Only scanner/sequence settings are copied: never names, dates, times of day,
IDs, UIDs, institution, station, free-text descriptions or the contrast agent's
free text (its presence is reported as a boolean). Units follow BIDS:
RepetitionTime, EchoTime, InversionTime and SliceTiming in **seconds** (DICOM
stores ms), FlipAngle in degrees, SliceThickness and SpacingBetweenSlices in
mm, MagneticFieldStrength in tesla. ``PhaseEncodingDirection`` refers to the
voxel axes of the converted volume (``i`` = DICOM column index, ``j`` = DICOM
row index, not flipped), so it can differ in sign from dcm2niix, which flips
rows; both point the same way in world space.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mri_safety.dicom.pixels import csa_scalar

#: Keywords copied unchanged (strings / numbers), BIDS name -> DICOM keyword.
_PLAIN: dict[str, str] = {
    "Modality": "Modality",
    "Manufacturer": "Manufacturer",
    "ManufacturersModelName": "ManufacturerModelName",
    "SoftwareVersions": "SoftwareVersions",
    "MagneticFieldStrength": "MagneticFieldStrength",
    "MRAcquisitionType": "MRAcquisitionType",
    "ScanningSequence": "ScanningSequence",
    "SequenceVariant": "SequenceVariant",
    "ScanOptions": "ScanOptions",
    "SequenceName": "SequenceName",
    "PulseSequenceName": "PulseSequenceName",
    "FlipAngle": "FlipAngle",
    "SliceThickness": "SliceThickness",
    "SpacingBetweenSlices": "SpacingBetweenSlices",
    "EchoTrainLength": "EchoTrainLength",
    "PixelBandwidth": "PixelBandwidth",
    "ImagingFrequency": "ImagingFrequency",
    "PatientPosition": "PatientPosition",
    "EchoNumber": "EchoNumbers",
}

#: Times stored in ms in DICOM, seconds in BIDS.
_MS_TO_S: dict[str, tuple[str, ...]] = {
    "RepetitionTime": ("RepetitionTime",),
    "EchoTime": ("EchoTime", "EffectiveEchoTime"),
    "InversionTime": ("InversionTime", "InversionTimes"),
}

#: Enhanced (multi-frame) MR keeps many of these in functional-group macros.
_FG_SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def _candidates(ds: Dataset) -> Iterator[Dataset]:
    """The dataset, then each macro item of its shared and first per-frame group."""
    yield ds
    for seq_kw in _FG_SEQUENCES:
        seq = ds.get(seq_kw)
        if not seq:
            continue
        for macro in seq[0]:
            if macro.VR == "SQ" and macro.value:
                yield macro.value[0]


def find_value(ds: Dataset, keyword: str) -> Any:
    """Value of ``keyword`` at top level or in an enhanced functional group (else None)."""
    for item in _candidates(ds):
        if keyword in item:
            v = item[keyword].value
            if v not in (None, ""):
                return v
    return None


def _plain(v: Any) -> Any:
    """pydicom value -> JSON-able Python value (DS/IS are float/int subclasses)."""
    if isinstance(v, MultiValue | list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("latin-1", errors="replace").strip()
    if isinstance(v, bool | int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    return str(v).strip()


def _first_number(v: Any) -> float | None:
    if isinstance(v, MultiValue | list | tuple):
        v = v[0] if len(v) else None
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _joined(v: Any) -> Any:
    """Multi-valued code strings as dcm2niix writes them (``EP\\GR``)."""
    if isinstance(v, list):
        return "\\".join(str(x) for x in v)
    return v


def acquisition_params(
    ds: Dataset, *, csa: dict[str, Any] | None = None, slice_times_s: list[float] | None = None
) -> dict[str, Any]:
    """BIDS sidecar acquisition keys from one representative dataset (no PHI).

    ``csa`` is the Siemens CSA image header (for phase-encoding polarity) and
    ``slice_times_s`` per-slice acquisition times in seconds ordered like the
    volume's ``k`` axis, when the caller knows them.
    """
    out: dict[str, Any] = {}
    for bids, kw in _PLAIN.items():
        v = find_value(ds, kw)
        if v is None:
            continue
        pv = _plain(v)
        if bids in ("ScanningSequence", "SequenceVariant", "ScanOptions", "SoftwareVersions"):
            pv = _joined(pv)
        elif bids == "EchoNumber":
            pv = int(_first_number(pv) or 0) or None
        if pv is not None and pv != "":
            out[bids] = pv
    for bids, kws in _MS_TO_S.items():
        for kw in kws:
            num = _first_number(find_value(ds, kw))
            if num is not None:
                out[bids] = round(num / 1000.0, 9)
                break
    itype = find_value(ds, "ImageType") or find_value(ds, "FrameType")
    if itype is not None:
        values = itype if isinstance(itype, MultiValue | list) else str(itype).split("\\")
        out["ImageType"] = [str(x) for x in values]
    agent = find_value(ds, "ContrastBolusAgent")
    out["ContrastBolusAgentPresent"] = bool(agent is not None and str(agent).strip())
    iop = find_value(ds, "ImageOrientationPatient")
    if iop is not None:
        out["ImageOrientationPatientDICOM"] = [float(x) for x in iop]
    ped = find_value(ds, "InPlanePhaseEncodingDirection")
    if ped is not None and str(ped).strip().upper() in ("ROW", "COL"):
        rc = str(ped).strip().upper()
        out["InPlanePhaseEncodingDirectionDICOM"] = rc
        axis = "i" if rc == "ROW" else "j"
        positive = csa_scalar(csa, "PhaseEncodingDirectionPositive") if csa else None
        if positive in (0, 1):
            # Siemens: 1 = phase encoded towards increasing row/column index.
            out["PhaseEncodingDirection"] = axis if positive == 1 else axis + "-"
        else:
            out["PhaseEncodingAxis"] = axis  # polarity unknown: BIDS allows the axis only
    if slice_times_s is not None and len(slice_times_s) > 1:
        out["SliceTiming"] = [round(float(t), 6) for t in slice_times_s]
    return out
