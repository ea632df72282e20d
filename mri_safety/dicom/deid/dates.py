"""Date shifting for the PS3.15 "Retain Longitudinal Temporal Information with
Modified Dates" option.

All dates of one patient move by the same whole number of days so that the
reference day (the dosing date, or the patient's first study when no dosing
date is known) becomes :data:`ANCHOR_DATE`. Day differences ("days from
dosing") are preserved exactly; the real calendar date is gone. Times of day
are not changed (a whole-day offset does not touch them).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

#: The reference day (dosing, else first study) is mapped to this date.
ANCHOR_DATE = dt.date(2000, 1, 1)

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{8})(\d{0,6}(?:\.\d{1,6})?)([+-]\d{4})?$")


def parse_da(value: str | None) -> dt.date | None:
    """Parse a DICOM DA (``YYYYMMDD``; old ``YYYY.MM.DD`` accepted). ``None`` if invalid."""
    if not value:
        return None
    text = str(value).strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    m = _DA.match(text)
    if not m:
        return None
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


@dataclass(frozen=True)
class DateShift:
    """A per-patient whole-day offset.

    ``offset_days`` is ``None`` when no reference date is known: dates are then
    handled by the basic profile (removed/emptied/dummy) instead of shifted.
    ``reference`` is ``"dosing"``, ``"first-study"`` or ``"none"``.
    """

    offset_days: int | None
    reference: str
    anchor: dt.date = ANCHOR_DATE

    @classmethod
    def from_reference(
        cls,
        dosing_date: dt.date | None,
        first_study_date: dt.date | None = None,
        anchor: dt.date = ANCHOR_DATE,
    ) -> DateShift:
        """Offset that maps ``dosing_date`` (preferred) or ``first_study_date`` to ``anchor``."""
        if dosing_date is not None:
            return cls((anchor - dosing_date).days, "dosing", anchor)
        if first_study_date is not None:
            return cls((anchor - first_study_date).days, "first-study", anchor)
        return cls(None, "none", anchor)

    @property
    def active(self) -> bool:
        return self.offset_days is not None

    def shift_date(self, value: dt.date) -> dt.date:
        if self.offset_days is None:
            raise ValueError("no reference date: dates cannot be shifted")
        return value + dt.timedelta(days=self.offset_days)

    def shift_da(self, value: str) -> str:
        """Shift one DA value; an unparseable value becomes ``""`` (never kept)."""
        parsed = parse_da(value)
        return "" if parsed is None else self.shift_date(parsed).strftime("%Y%m%d")

    def shift_dt(self, value: str) -> str:
        """Shift the date part of one DT value, keep the time of day, drop the
        UTC offset suffix (it names the site's time zone). Values with less
        than day precision become ``""``."""
        m = _DT.match(str(value).strip())
        if not m:
            return ""
        day = self.shift_da(m[1])
        return day + m[2] if day else ""
