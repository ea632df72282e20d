"""Reviewer decisions exported by the review app: ``OUT/review/decisions.json``.

Format (``format`` = ``mri-safety-decisions/1``)::

    {"format": "mri-safety-decisions/1",
     "decisions": [
       {"subject": "P5QKCQ25AO4", "visit": "M2",
        "decision": "new abnormal finding",        # or "no new abnormal finding"
        "reviewer": "reader-01",
        "time": "2026-07-01T10:22:00Z",            # ISO 8601, UTC
        "finding_ids": ["brain-flair-vs-baseline-c2"],
        "comment": "optional free text"}]}

``subject`` is the pseudonymised label (no ``sub-`` prefix), ``visit`` the
session name (no ``ses-``). Several decisions for one visit: the latest
``time`` wins (a re-read supersedes). ``finding_ids`` name candidates as
:func:`mri_safety.report.context.finding_id` does.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

FORMAT = "mri-safety-decisions/1"
DECISIONS = ("new abnormal finding", "no new abnormal finding")


class Decision(BaseModel):
    """One reviewer decision on one visit."""

    model_config = ConfigDict(extra="forbid")

    subject: str
    visit: str
    decision: Literal["new abnormal finding", "no new abnormal finding"]
    reviewer: str
    time: dt.datetime
    finding_ids: list[str] = []
    comment: str = ""


def parse_decisions(doc: Any, source: str = "decisions") -> list[Decision]:
    """Validate a decisions document (the parsed JSON). Raises ``ValueError``
    naming ``source`` and the offending entry."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source}: not a decisions file (need \"format\": \"{FORMAT}\")")
    items = doc.get("decisions")
    if not isinstance(items, list):
        raise ValueError(f"{source}: \"decisions\" must be a list")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(Decision.model_validate(item))
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
            raise ValueError(f"{source}: decision #{i}: {msgs}") from None
    return out


def load_decisions(path: Path) -> list[Decision]:
    """Read ``path``; an absent file means no decisions yet (empty list)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None
    return parse_decisions(doc, str(path))


def latest_decisions(decisions: list[Decision]) -> dict[tuple[str, str], Decision]:
    """The decision in force per ``(subject, visit)``: the latest ``time``."""
    out: dict[tuple[str, str], Decision] = {}
    for d in decisions:
        key = (d.subject, d.visit)
        if key not in out or _utc(d.time) >= _utc(out[key].time):
            out[key] = d
    return out


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
