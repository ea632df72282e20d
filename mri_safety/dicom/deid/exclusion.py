"""Which DICOM objects are not converted, and why.

Excluded: anything flagged with burned-in annotation, secondary captures
(screenshots, often with names burned into pixels), and non-image objects
(structured reports, presentation states, raw data, spectroscopy, waveforms,
encapsulated documents, RT, segmentations/registrations, private SOP classes).
By default only MR image storage classes are converted. ``ImageType``
``DERIVED\\SECONDARY`` on an MR Image Storage object is *not* a secondary
capture (scanner reformats and many research exports look like that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from mri_safety.dicom.records import InstanceRecord

_STORAGE = "1.2.840.10008.5.1.4.1.1."

#: Converted MR image storage SOP classes.
MR_IMAGE_CLASSES: frozenset[str] = frozenset(
    {
        _STORAGE + "4",  # MR Image Storage
        _STORAGE + "4.1",  # Enhanced MR Image Storage
        _STORAGE + "4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)

_SECONDARY_CAPTURE = _STORAGE + "7"

#: (prefix, what it is); a SOP class equal to the prefix or below it (prefix + ".").
_NON_IMAGE: tuple[tuple[str, str], ...] = (
    (_STORAGE + "88", "structured report / key object selection"),
    (_STORAGE + "11", "presentation state"),
    (_STORAGE + "66", "raw data, segmentation or registration object"),
    (_STORAGE + "67", "real world value mapping"),
    (_STORAGE + "4.2", "MR spectroscopy"),
    (_STORAGE + "9", "waveform"),
    (_STORAGE + "104", "encapsulated document"),
    (_STORAGE + "481", "radiotherapy object"),
)


def _under(uid: str, prefix: str) -> bool:
    return uid == prefix or uid.startswith(prefix + ".")


def _sop_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else "unknown SOP class"


def _fields(obj: Dataset | Mapping[str, Any] | InstanceRecord) -> tuple[str, str, bool | None]:
    if isinstance(obj, InstanceRecord):
        return obj.sop_class_uid, str(obj.tags.get("BurnedInAnnotation", "")), obj.has_pixel_data
    if isinstance(obj, Dataset):
        return str(obj.get("SOPClassUID", "")), str(obj.get("BurnedInAnnotation", "")), None
    has_pixels = obj.get("has_pixel_data")
    return (
        str(obj.get("SOPClassUID", "")),
        str(obj.get("BurnedInAnnotation", "")),
        None if has_pixels is None else bool(has_pixels),
    )


def exclusion_reason(
    obj: Dataset | Mapping[str, Any] | InstanceRecord, *, mr_only: bool = True
) -> str | None:
    """Why ``obj`` must not be converted, or ``None`` when it may be.

    ``obj`` is a pydicom dataset (header only is enough), an
    :class:`InstanceRecord`, or a mapping of DICOM keywords (``SOPClassUID``,
    ``BurnedInAnnotation``, optionally ``has_pixel_data``). The reason text
    contains no header values except the SOP class name (not PHI).
    """
    sop, burned, has_pixels = _fields(obj)
    sop = sop.strip(" \x00")
    if burned.strip().upper() == "YES":
        return "burned-in annotation (BurnedInAnnotation = YES)"
    if not sop:
        return "no SOP Class UID: not a DICOM storage object"
    if _under(sop, _SECONDARY_CAPTURE):
        return f"secondary capture ({_sop_name(sop)}): may show identifying text in pixels"
    for prefix, what in _NON_IMAGE:
        if _under(sop, prefix):
            return f"non-image object: {what} ({_sop_name(sop)})"
    if not sop.startswith("1.2.840.10008."):
        return "private (vendor) SOP class: not a standard image object"
    if has_pixels is False:
        return f"no pixel data ({_sop_name(sop)})"
    if mr_only and sop not in MR_IMAGE_CLASSES:
        return f"not an MR image ({_sop_name(sop)})"
    return None
