"""Trial visit assignment: which study is baseline, 24h, M2, ... for each patient.

Visits count from the treatment (dosing) date given per patient in an
enrolment CSV; the windows and ClinicalTrialTimePointID aliases are in
``configs/visits.yaml`` (its header comment gives the precedence:
override > time point > dates > order). ``days_from_dosing`` is
``StudyDate - dosing_date`` in whole calendar days.

Enrolment CSV format (UTF-8, header line required, one row per patient)::

    patient_id,dosing_date,route,visit_overrides
    P001,2024-01-10,intrathecal,
    P002,20240115,,20240320=M2;1.2.826.0.1.3680043.2.1125.1.5=M4

* ``patient_id`` matches the DICOM PatientID; ``dosing_date`` is
  ``YYYY-MM-DD`` or ``YYYYMMDD``; ``route`` (optional) is free text.
* ``visit_overrides`` (optional): ``key=label`` pairs separated by ``;``.
  ``key`` is a study date (``YYYY-MM-DD``/``YYYYMMDD``; applies to every study
  of that patient on that date) or a StudyInstanceUID (for two studies on one
  date); ``label`` is an alphanumeric visit label (e.g. ``M2``).
* Blank lines and lines starting with ``#`` are ignored.

Example
-------
>>> from datetime import date
>>> from mri_safety.config import load_visit_windows
>>> enr = {"P1": Enrolment("P1", date(2024, 1, 10))}
>>> studies = [StudyInfo("P1", "1.2.1", "20240105", display_name="scan-a"),
...            StudyInfo("P1", "1.2.2", "20240311", display_name="scan-b")]
>>> out = assign_visits(studies, enr, load_visit_windows())
>>> [(out[u].label, out[u].days_from_dosing) for u in ("1.2.1", "1.2.2")]
[('baseline', -5), ('M2', 61)]
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from mri_safety.config import VisitWindows, load_visit_windows, normalise_time_point
from mri_safety.dicom.records import SeriesGroup

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_COLUMNS = ("patient_id", "dosing_date", "route", "visit_overrides")


class EnrolmentError(ValueError):
    """The enrolment file is unreadable or has bad rows (message names file and lines)."""


class VisitAmbiguityError(ValueError):
    """Two studies of one patient got the same visit label.

    ``conflicts`` holds one message per conflict; ``partial`` the assignments
    of every patient without a conflict, so a caller can go on with them.
    """

    def __init__(self, conflicts: list[str], partial: dict[str, VisitAssignment]) -> None:
        super().__init__("\n".join(conflicts))
        self.conflicts = conflicts
        self.partial = partial


@dataclass(frozen=True)
class Enrolment:
    """One patient's enrolment row. ``overrides`` maps a study date or a
    StudyInstanceUID to a visit label; ``source`` is ``file:line``."""

    patient_id: str
    dosing_date: date
    route: str = ""
    overrides: dict[date | str, str] = field(default_factory=dict, hash=False, compare=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class StudyInfo:
    """What visit assignment needs to know about one study. ``study_date`` is
    DICOM ``YYYYMMDD`` (``""`` when absent); ``display_name`` is PHI-free text
    used in messages (e.g. the source folder relative to the input root)."""

    patient_id: str
    study_instance_uid: str
    study_date: str
    clinical_trial_time_point_id: str = ""
    display_name: str = ""
    study_time: str = ""


@dataclass(frozen=True)
class VisitAssignment:
    """``label`` is a BIDS-safe session label; ``days_from_dosing`` is None
    without an enrolment row or a valid StudyDate; ``source`` is one of
    ``override``, ``time_point``, ``window``, ``baseline``, ``order``,
    ``unscheduled``."""

    label: str
    days_from_dosing: int | None
    source: str
    warnings: tuple[str, ...] = ()


def parse_date(text: str) -> date:
    """``YYYY-MM-DD`` or ``YYYYMMDD`` -> date; ``ValueError`` otherwise."""
    s = text.strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(s, fmt).date()
        except ValueError:
            pass
    raise ValueError(f"bad date {text!r} (expected YYYY-MM-DD or YYYYMMDD)")


def _parse_overrides(text: str) -> dict[date | str, str]:
    out: dict[date | str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, label = (x.strip() for x in item.partition("="))
        if not sep or not key or not label:
            raise ValueError(f"bad visit override {item!r} (expected KEY=LABEL)")
        if not _LABEL.match(label):
            raise ValueError(f"visit label {label!r} in {item!r} must be alphanumeric")
        k: date | str = key
        if re.fullmatch(r"\d{8}|\d{4}-\d{2}-\d{2}", key):
            k = parse_date(key)
        elif not re.fullmatch(r"[0-9]+(\.[0-9]+)+", key):
            raise ValueError(f"override key {key!r} is neither a date nor a StudyInstanceUID")
        if k in out:
            raise ValueError(f"override key {key!r} given twice")
        out[k] = label
    return out


def read_enrolment(path: str | Path) -> dict[str, Enrolment]:
    """Read the enrolment CSV (format in the module docstring).

    Raises :class:`EnrolmentError` listing every bad line (file:line: problem):
    bad dates or overrides, empty or duplicate patient IDs, missing columns.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise EnrolmentError(f"{path}: cannot read enrolment file: {e}") from e
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise EnrolmentError(f"{path}: empty enrolment file (needs a header line)")
    rows = list(csv.reader([ln for _, ln in lines]))
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _COLUMNS[:2] if c not in header]
    unknown = [c for c in header if c not in _COLUMNS]
    if missing or unknown:
        raise EnrolmentError(
            f"{path}:{lines[0][0]}: header must be patient_id,dosing_date[,route]"
            f"[,visit_overrides]; missing {missing}, unknown {unknown}"
        )
    out: dict[str, Enrolment] = {}
    errors: list[str] = []
    for (lineno, _), row in zip(lines[1:], rows[1:], strict=True):
        where = f"{path}:{lineno}"
        if len(row) > len(header):
            errors.append(f"{where}: {len(row)} fields, header has {len(header)}")
            continue
        rec = dict(zip(header, [c.strip() for c in row], strict=False))
        pid = rec.get("patient_id", "")
        try:
            if not pid:
                raise ValueError("empty patient_id")
            if pid in out:
                raise ValueError(f"patient {pid!r} already listed at {out[pid].source}")
            dosing = parse_date(rec.get("dosing_date", ""))
            overrides = _parse_overrides(rec.get("visit_overrides", ""))
        except ValueError as e:
            errors.append(f"{where}: {e}")
            continue
        out[pid] = Enrolment(pid, dosing, rec.get("route", ""), overrides, where)
    if errors:
        raise EnrolmentError("\n".join(errors))
    return out


def studies_from_groups(
    groups: Iterable[SeriesGroup], display_name: Callable[[SeriesGroup], str] | None = None
) -> list[StudyInfo]:
    """One :class:`StudyInfo` per StudyInstanceUID (first group wins).
    ``display_name(group)`` defaults to the group's source folder."""
    seen: dict[str, StudyInfo] = {}
    for g in groups:
        if g.study_instance_uid in seen:
            continue
        seen[g.study_instance_uid] = StudyInfo(
            patient_id=g.patient_id,
            study_instance_uid=g.study_instance_uid,
            study_date=g.study_date,
            clinical_trial_time_point_id=str(g.tags.get("ClinicalTrialTimePointID") or ""),
            display_name=display_name(g) if display_name else g.source_dir,
            study_time=g.first.study_time,
        )
    return list(seen.values())


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:8]


def _name(s: StudyInfo) -> str:
    return f"{s.display_name or '(unnamed)'!r} (study {_uid_hash(s.study_instance_uid)})"


def _unscheduled(days: int) -> str:
    return f"unscheduledDay{days}" if days >= 0 else f"unscheduledDayMinus{-days}"


def _study_date(s: StudyInfo) -> date | None:
    try:
        return parse_date(s.study_date) if s.study_date else None
    except ValueError:
        return None


def _assign_patient(
    studies: list[StudyInfo], enr: Enrolment | None, windows: VisitWindows
) -> tuple[dict[str, VisitAssignment], list[str]]:
    """Assignments of one patient's studies and conflict messages."""
    aliases = windows.alias_map()
    by_label = {w.label: w for w in windows.windows}
    out: dict[str, VisitAssignment] = {}
    warn: dict[str, list[str]] = defaultdict(list)
    dates = {s.study_instance_uid: _study_date(s) for s in studies}
    days: dict[str, int | None] = {}
    for s in studies:
        d = dates[s.study_instance_uid]
        days[s.study_instance_uid] = (d - enr.dosing_date).days if enr and d else None
        if s.study_date and d is None:
            warn[s.study_instance_uid].append(f"{_name(s)}: invalid StudyDate {s.study_date!r}")

    def put(s: StudyInfo, label: str, source: str) -> None:
        out[s.study_instance_uid] = VisitAssignment(
            label, days[s.study_instance_uid], source, tuple(warn[s.study_instance_uid])
        )

    # 1-2: explicit labels (overrides, then time points)
    rest: list[StudyInfo] = []
    for s in studies:
        uid, d, n = s.study_instance_uid, dates[s.study_instance_uid], days[s.study_instance_uid]
        override = None
        if enr is not None:
            override = enr.overrides.get(uid) or (enr.overrides.get(d) if d else None)
        if override:
            put(s, override, "override")
            continue
        tp = s.clinical_trial_time_point_id.strip()
        if tp:
            label = aliases.get(normalise_time_point(tp))
            if label is not None:
                w = by_label.get(label)
                if n is not None and w is not None and not w.min_days <= n <= w.max_days:
                    warn[uid].append(f"{_name(s)}: time point {tp!r} -> {label} but day {n} is "
                                     f"outside its window [{w.min_days}, {w.max_days}]")
                elif (n is not None and label == windows.baseline_label
                      and not _pre_dose(n, windows)):
                    warn[uid].append(f"{_name(s)}: time point {tp!r} -> {label} but day {n} is "
                                     "not before dosing")
                put(s, label, "time_point")
                continue
            warn[uid].append(f"{_name(s)}: ClinicalTrialTimePointID {tp!r} is not in "
                             "time_point_aliases (configs/visits.yaml): using the dates")
        rest.append(s)
    taken = {a.label for a in out.values()}

    if enr is not None:
        _assign_by_dates(rest, days, windows, taken, warn, put)
    else:
        _assign_by_order(rest, dates, windows, bool(out), warn, put)
    return out, _conflicts(studies, out)


def _pre_dose(days: int, windows: VisitWindows) -> bool:
    return days < 0 or (days == 0 and not windows.day0_is_post_dose)


def _assign_by_dates(
    rest: list[StudyInfo],
    days: dict[str, int | None],
    windows: VisitWindows,
    taken: set[str],
    warn: dict[str, list[str]],
    put: Callable[[StudyInfo, str, str], None],
) -> None:
    undated = [s for s in rest if days[s.study_instance_uid] is None]
    dated = sorted((s for s in rest if s not in undated),
                   key=lambda s: (days[s.study_instance_uid], s.study_time, s.study_instance_uid))
    pre = [s for s in dated if _pre_dose(days[s.study_instance_uid] or 0, windows)]
    max_before = windows.baseline_max_days_before
    base = [s for s in pre if -(days[s.study_instance_uid] or 0) <= max_before]
    baseline_day = days[base[-1].study_instance_uid] if base else None
    for s in dated:
        uid = s.study_instance_uid
        n = days[uid]
        assert n is not None
        label, source = _unscheduled(n), "unscheduled"
        if s in pre:
            if n == baseline_day:
                label, source = windows.baseline_label, "baseline"
            else:
                why = ("an earlier pre-dose study than the baseline" if base and s in base
                       else f"more than {windows.baseline_max_days_before} days before dosing")
                warn[uid].append(f"{_name(s)}: day {n} is {why}: {label}")
        else:
            w = next((w for w in windows.windows if w.min_days <= n <= w.max_days), None)
            if w is not None:
                label, source = w.label, "window"
            else:
                warn[uid].append(f"{_name(s)}: day {n} is outside every visit window: {label}")
        if source != "unscheduled" and label in taken:
            warn[uid].append(f"{_name(s)}: day {n} falls in {label}, already given explicitly "
                             f"(override or time point) to another study: {_unscheduled(n)}")
            label, source = _unscheduled(n), "unscheduled"
        put(s, label, source)
    for k, s in enumerate(undated, 1):
        warn[s.study_instance_uid].append(f"{_name(s)}: no valid StudyDate: unscheduled{k}")
        put(s, f"unscheduled{k}", "unscheduled")


def _assign_by_order(
    rest: list[StudyInfo],
    dates: dict[str, date | None],
    windows: VisitWindows,
    others_explicit: bool,
    warn: dict[str, list[str]],
    put: Callable[[StudyInfo, str, str], None],
) -> None:
    ordered = sorted(rest, key=lambda s: (dates[s.study_instance_uid] or date.max,
                                          s.study_time, s.study_instance_uid))
    for k, s in enumerate(ordered):
        uid = s.study_instance_uid
        if others_explicit or dates[uid] is None:
            label, source = f"unscheduled{k + 1}", "unscheduled"
            why = "no valid StudyDate" if dates[uid] is None else "other studies have time points"
            warn[uid].append(f"{_name(s)}: no enrolment row and {why}: {label}")
        else:
            label = windows.baseline_label if k == 0 else f"followup{k}"
            source = "order"
            warn[uid].append(f"{_name(s)}: no enrolment row and no ClinicalTrialTimePointID: "
                             f"visit {label} by date order")
        put(s, label, source)


def _conflicts(studies: list[StudyInfo], out: dict[str, VisitAssignment]) -> list[str]:
    by_uid = {s.study_instance_uid: s for s in studies}
    groups: dict[str, list[str]] = defaultdict(list)
    for uid, a in out.items():
        groups[a.label].append(uid)
    # Date order: two studies on one day are also ambiguous (a visit is a day).
    same_day: dict[str, list[str]] = defaultdict(list)
    for uid, a in out.items():
        if a.source == "order":
            same_day[by_uid[uid].study_date].append(uid)
    for uids in same_day.values():
        if len(uids) > 1:
            groups["/".join(out[u].label for u in uids) + " (same day, by date order)"] = uids
    msgs = []
    for label, uids in groups.items():
        if len(uids) < 2:
            continue
        ss = sorted((by_uid[u] for u in uids), key=lambda s: s.study_date)
        def where(s: StudyInfo) -> str:
            a = out[s.study_instance_uid]
            n = a.days_from_dosing
            day = f"day {n}" if n is not None else "no dosing date"
            return f"{s.display_name or '(unnamed)'!r} (study {_uid_hash(s.study_instance_uid)}, "\
                   f"{day}, by {a.source})"

        detail = ", ".join(where(s) for s in ss)
        msgs.append(f"patient {ss[0].patient_id!r}: {len(ss)} studies for visit {label}: {detail}; "
                    "add a visit override (study date or StudyInstanceUID) to the enrolment file")
    return msgs


def assign_visits(
    studies: Iterable[StudyInfo],
    enrolment: dict[str, Enrolment] | None,
    windows: VisitWindows | None = None,
) -> dict[str, VisitAssignment]:
    """Visit label of every study, keyed by StudyInstanceUID.

    Patients are independent. Warnings (unscheduled studies, unknown time
    points, order-based labels) are attached to each assignment and logged.
    Raises :class:`VisitAmbiguityError` after all patients are processed when
    any patient has two studies with one label; its ``partial`` attribute holds
    the assignments of the patients without conflicts.
    """
    windows = windows or load_visit_windows()
    per_patient: dict[str, list[StudyInfo]] = defaultdict(list)
    for s in studies:
        per_patient[s.patient_id].append(s)
    result: dict[str, VisitAssignment] = {}
    conflicts: list[str] = []
    for pid, ss in per_patient.items():
        out, bad = _assign_patient(ss, (enrolment or {}).get(pid), windows)
        for a in out.values():
            for w in a.warnings:
                log.warning("%s", w)
        if bad:
            conflicts += bad
        else:
            result.update(out)
    if conflicts:
        raise VisitAmbiguityError(conflicts, result)
    return result
