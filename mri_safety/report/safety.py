"""The trial safety table: one row per patient x visit.

Column ``new_abnormal_finding`` (the rule, see docs/report.md):

* ``baseline`` for the baseline visit;
* the reviewer's decision when there is one: ``yes`` / ``no``;
* otherwise ``not assessable`` when the visit status is ``not assessable``;
* otherwise ``pending``. The machine never says "no": without a reviewer's
  decision a visit is pending, with or without candidates.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from mri_safety.report.decisions import Decision

SAFETY_COLUMNS = (
    "subject", "visit", "days_from_dosing", "series_available", "series_failed", "qc_verdict",
    "visit_status", "flagged_candidates", "flagged_abnormalities", "reviewer_decision",
    "reviewer", "decision_time", "new_abnormal_finding", "report",
)

_QC_RANK = {"usable": 0, "review": 1, "unusable": 2, "failed": 3}


def new_finding(status: str, decision: Decision | None) -> str:
    """The ``new abnormal finding`` cell: yes / no / pending / not assessable / baseline."""
    if status == "baseline":
        return "baseline"
    if decision is not None:
        return "yes" if decision.decision == "new abnormal finding" else "no"
    if status == "not assessable":
        return "not assessable"
    return "pending"


def worst_qc(series: Sequence[Mapping[str, Any]]) -> str:
    """Worst QC verdict of a visit's series (``failed`` when a series did not convert)."""
    worst = ""
    for s in series:
        v = "failed" if s.get("status") != "converted" else str(s.get("qc_verdict") or "review")
        if not worst or _QC_RANK.get(v, 1) > _QC_RANK.get(worst, 1):
            worst = v
    return worst or "no series"


def series_label(s: Mapping[str, Any]) -> str:
    """``brain FLAIR`` / ``cervical T2w`` (+ ``post-contrast``)."""
    lab = f"{s.get('region') or '?'} {s.get('contrast') or '?'}"
    return lab + (" post-contrast" if s.get("post_contrast") else "")


def visit_time_key(visit: Mapping[str, Any]) -> tuple[int, bool, float]:
    """Sort key of one subject's visits (a visit summary or run-summary entry) in
    time order: ``visit_index`` (StudyDate order, set by the trial pipeline), then
    days from dosing, a visit without them last.

    >>> sorted([{"days_from_dosing": None}, {"days_from_dosing": 61},
    ...         {"days_from_dosing": -7}], key=visit_time_key)
    [{'days_from_dosing': -7}, {'days_from_dosing': 61}, {'days_from_dosing': None}]
    """
    days = visit.get("days_from_dosing")
    return int(visit.get("visit_index", 0)), days is None, float(days or 0)


def safety_rows(
    visits: Sequence[Mapping[str, Any]],
    decisions: Mapping[tuple[str, str], Decision] | None = None,
    report_links: Mapping[tuple[str, str], str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of the safety table from visit summaries (``visit_summary.json``
    dicts) and the decisions in force (:func:`latest_decisions`), sorted by
    subject and time (:func:`visit_time_key`). ``report_links`` maps (subject, visit) to
    the report's relative path."""
    decisions = decisions or {}
    rows = []
    for v in sorted(visits, key=lambda v: (str(v["subject"]), *visit_time_key(v),
                                           str(v["visit"]))):
        key = (str(v["subject"]), str(v["visit"]))
        d = decisions.get(key)
        series = v.get("series", [])
        ok = [series_label(s) for s in series if s.get("status") == "converted"]
        bad = [series_label(s) for s in series if s.get("status") != "converted"]
        rows.append({
            "subject": key[0], "visit": key[1],
            "days_from_dosing": v.get("days_from_dosing"),
            "series_available": "; ".join(sorted(ok)),
            "series_failed": "; ".join(sorted(bad)),
            "qc_verdict": worst_qc(series),
            "visit_status": v.get("status", ""),
            "flagged_candidates": int(v.get("n_flagged", 0)),
            # an abnormality flagged by several comparisons (FLAIR and T2w, vs baseline
            # and vs the previous visit) counted once (docs/detection.md)
            "flagged_abnormalities": int(v.get("n_flagged_abnormalities",
                                               v.get("n_flagged", 0))),
            "reviewer_decision": d.decision if d else "",
            "reviewer": d.reviewer if d else "",
            "decision_time": d.time.isoformat() if d else "",
            "new_abnormal_finding": new_finding(str(v.get("status", "")), d),
            "report": (report_links or {}).get(key, ""),
        })
    return rows


def safety_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV text with :data:`SAFETY_COLUMNS` as header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SAFETY_COLUMNS), lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in SAFETY_COLUMNS})
    return buf.getvalue()
