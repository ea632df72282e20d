"""PS3.15 Annex E Table E.1-1 (Basic Application Level Confidentiality Profile)
as data, and the per-attribute action engine that applies it.

The table itself is not retyped here: it is read from the ``dicom-anonymizer``
package (KitwareMedical), module ``dicom_anonymization_databases.dicomfields_2026c``,
whose categories (``D_TAGS``, ``Z_TAGS``, ... ``X_Z_U_STAR_TAGS``) are the
action columns of the basic profile. That package's own anonymizer is not
used: it generates *random* UIDs and dummy values, while this pipeline needs
UIDs and dates that are remapped deterministically (same input, same output,
across processes and runs). Applying the actions is therefore written here.

Actions (PS3.15 E.1.1): ``D`` replace with a non-identifying dummy of the same
VR, ``Z`` replace with a zero-length value, ``X`` remove, ``U`` replace a UID
by a consistently remapped UID; combined actions (``Z/D``, ``X/Z``, ``X/D``,
``X/Z/D``, ``X/Z/U*``) take the weakest action the IODs written by this
pipeline (MR Image, Enhanced MR Image) allow, see :func:`resolve_action`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mri_safety.dicom.deid.dates import DateShift

TABLE_MODULE = "dicomfields_2026c"

#: dicom-anonymizer category name -> PS3.15 Table E.1-1 basic-profile action.
CATEGORY_ACTION: dict[str, str] = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - keywords below are all in pydicom's dictionary
        raise KeyError(keyword)
    return int(tag)


#: Deliberate deviation from the basic profile (which says Z): the trial visit
#: label is study-assigned, not patient-identifying, and names the session.
RETAINED: frozenset[int] = frozenset({_tag("ClinicalTrialTimePointID")})

#: Dates that are never shifted/kept even with the modified-dates option:
#: a shifted birth date would still give the exact age at each scan.
NEVER_SHIFT: frozenset[int] = frozenset({_tag("PatientBirthDate")})

#: Attributes of combined actions (``Z/D``, ``X/D``, ``X/Z/D``) that are Type 1
#: in the MR / Enhanced MR IODs, so they get a dummy (D) instead of Z or X.
TYPE1_DUMMY: frozenset[int] = frozenset(
    _tag(k) for k in ("DeviceSerialNumber", "ContentDate", "ContentTime", "AcquisitionDateTime")
)

#: Attributes of ``X/Z`` / ``X/Z/D`` that are Type 2 in the Enhanced MR IOD,
#: so they are emptied (Z) instead of removed.
TYPE2_EMPTY: frozenset[int] = frozenset({_tag("AcquisitionContextSequence")})

#: Dummy values for the D action (text VRs). No real data uses these strings.
DUMMY_TEXT = "REMOVED"
DUMMY_DA = "19000101"
DUMMY_DT = "19000101000000"
DUMMY_TM = "000000"

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "PN"})
_NUMBER_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})


@dataclass(frozen=True)
class ProfileTable:
    """Basic-profile actions keyed by tag (``int`` 0xggggeeee).

    ``masked`` holds repeating-group entries (curves 50xx, overlays 60xx) as
    ``(group, element, group_mask, element_mask, action)``.
    """

    exact: Mapping[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]
    source: str

    def action(self, tag: int) -> str | None:
        """Basic-profile action for ``tag`` or ``None`` when the table does not list it."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gm, em, act in self.masked:
            if group & gm == g & gm and element & em == e & em:
                return act
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.masked)


@lru_cache(maxsize=1)
def load_table(module: str = TABLE_MODULE) -> ProfileTable:
    """Load Table E.1-1 from dicom-anonymizer (cached)."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector(module)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in CATEGORY_ACTION.items():
        for entry in db[category]:
            if len(entry) == 4:
                g, e, gm, em = entry
                masked.append((g, e, gm, em, action))
            else:
                g, e = entry
                exact[(g << 16) | e] = action
    return ProfileTable(exact=exact, masked=tuple(masked), source=f"dicom-anonymizer {module}")


def is_curve_or_overlay(group: int) -> bool:
    """Groups 50xx (curves, retired) and 60xx (overlays): always removed."""
    return 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF


def resolve_action(action: str | None, tag: int, vr: str, shift: DateShift) -> str | None:
    """Reduce a Table E.1-1 action to one concrete step for one element.

    Returns ``None`` (keep; recurse into sequences), ``"KEEP"`` (retained
    deviation, no recursion needed), ``"D"``, ``"Z"``, ``"X"``, ``"U"``,
    ``"SHIFT"`` (date/datetime moved by the whole-day offset) or ``"U*"``
    (keep a reference sequence, remapping the UIDs inside it).

    With the Retain Longitudinal Temporal Information Modified Dates option
    (``shift.active``), every DA/DT the basic profile would keep in some form
    (any action but a plain ``X``) is shifted, and TM values are kept: the
    offset is a whole number of days, so the time of day is not modified.
    Dates the basic profile removes outright (X) stay removed: the pipeline
    does not need them.
    """
    if tag in RETAINED:
        return "KEEP"
    if action is None:
        return None
    if shift.active and action != "X" and tag not in NEVER_SHIFT:
        if vr in ("DA", "DT"):
            return "SHIFT"
        if vr == "TM":
            return "KEEP"
    if action in ("D", "Z", "X", "U"):
        return action
    if action == "Z/D":
        return "D" if tag in TYPE1_DUMMY else "Z"
    if action == "X/Z":
        return "Z" if tag in TYPE2_EMPTY else "X"
    if action == "X/D":
        return "D" if tag in TYPE1_DUMMY else "X"
    if action == "X/Z/D":
        if tag in TYPE1_DUMMY:
            return "D"
        return "Z" if tag in TYPE2_EMPTY else "X"
    if action == "X/Z/U*":
        # Referenced/Source Image Sequence: kept so derived images still point
        # at their (remapped) sources; every UID inside is a U attribute.
        return "U*"
    raise ValueError(f"unknown Table E.1-1 action {action!r}")


def _empty(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence([])
    elif elem.VR in _TEXT_VRS or elem.VR in ("DA", "DT", "TM", "AS", "UI", "UR"):
        elem.value = ""
    else:
        elem.value = None


def _dummy(elem: DataElement, uid_map: Callable[[str], str]) -> None:
    vr = elem.VR
    if vr in _TEXT_VRS:
        elem.value = DUMMY_TEXT
    elif vr == "DA":
        elem.value = DUMMY_DA
    elif vr == "DT":
        elem.value = DUMMY_DT
    elif vr == "TM":
        elem.value = DUMMY_TM
    elif vr in ("DS", "IS"):
        elem.value = "0"
    elif vr in _NUMBER_VRS:
        elem.value = 0
    elif vr == "UI":
        _remap(elem, uid_map)
    else:  # SQ (structured content, graphics), binary VRs, AS, UR, AT
        _empty(elem)


def _remap(elem: DataElement, uid_map: Callable[[str], str]) -> None:
    value = elem.value
    if value is None or value == "":
        return
    if isinstance(value, str):
        elem.value = uid_map(value)
    else:  # MultiValue of UIDs
        elem.value = [uid_map(str(v)) for v in value if str(v)]


def _shift(elem: DataElement, shift: DateShift) -> None:
    value = elem.value
    if value is None or value == "":
        return
    fn = shift.shift_da if elem.VR == "DA" else shift.shift_dt
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    out = [fn(str(v)) for v in values]
    out = [v for v in out if v]
    elem.value = out[0] if len(out) == 1 else (out if out else "")


@dataclass
class Context:
    """What one de-identification pass needs besides the table."""

    table: ProfileTable
    shift: DateShift
    uid_map: Callable[[str], str]
    replacements: Mapping[int, str]  # tag -> fixed value (PatientID -> pseudonym, ...)


def apply_profile(ds: Dataset, ctx: Context) -> None:
    """Apply Table E.1-1 to ``ds`` in place, recursing into kept sequences.

    Private tags and curve/overlay groups are removed at every level.
    """
    for elem in list(ds):
        tag = int(elem.tag)
        if elem.tag.is_private or is_curve_or_overlay(elem.tag.group):
            del ds[elem.tag]
            continue
        if tag in ctx.replacements:
            elem.value = ctx.replacements[tag]
            continue
        step = resolve_action(ctx.table.action(tag), tag, elem.VR, ctx.shift)
        if step == "X":
            del ds[elem.tag]
            continue
        if step == "Z":
            _empty(elem)
        elif step == "D":
            _dummy(elem, ctx.uid_map)
        elif step == "U":
            _remap(elem, ctx.uid_map)
        elif step == "SHIFT":
            _shift(elem, ctx.shift)
        if elem.VR == "SQ" and step in (None, "U*") and elem.value:
            for item in elem.value:
                apply_profile(item, ctx)
