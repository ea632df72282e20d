"""usable / review / unusable verdict from image quality metrics.

Thresholds come from ``configs/qc.yaml`` ``verdict`` (see docs/qc.md for how
they were chosen). An unusable follow-up is not compared with its baseline;
the visit then shows "not assessable" for that series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mri_safety.qc.config import Threshold, VerdictThresholds

Status = Literal["usable", "review", "unusable"]
_RANK: dict[str, int] = {"usable": 0, "review": 1, "unusable": 2}


@dataclass(frozen=True)
class Verdict:
    """Overall status and one human-readable reason per failed check."""

    status: Status
    reasons: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def assessable(self) -> bool:
        """False when the series must not be compared (visit: "not assessable")."""
        return self.status != "unusable"


def _judge(value: float, t: Threshold) -> Status:
    if t.higher_is_better:
        return "unusable" if value < t.unusable else "review" if value < t.review else "usable"
    return "unusable" if value > t.unusable else "review" if value > t.review else "usable"


def _finite(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def qc_verdict(
    metrics: Mapping[str, float | None],
    baseline: Mapping[str, float | None] | None = None,
    thresholds: VerdictThresholds | None = None,
) -> Verdict:
    """Verdict for one series from its metrics (``QualityMetrics.as_dict()``).

    ``baseline``: the baseline series' metrics; when given, the
    ``relative_to_baseline`` checks (follow-up / baseline) are applied too.
    ``None`` / NaN metrics (not applicable) are skipped; with no applicable
    check at all the verdict is "review" (nothing shows the image is usable).
    """
    th = thresholds or VerdictThresholds()
    status: Status = "usable"
    reasons: list[str] = []
    checked: list[str] = []

    def apply(name: str, value: float, t: Threshold, what: str) -> None:
        nonlocal status
        checked.append(what)
        s = _judge(value, t)
        if s != "usable":
            op = "<" if t.higher_is_better else ">"
            limit = t.unusable if s == "unusable" else t.review
            reasons.append(f"{s}: {what} = {value:.3g} {op} {limit:g}")
            if _RANK[s] > _RANK[status]:
                status = s

    for name, t in th.absolute.items():
        v = metrics.get(name)
        if v is not None and _finite(v):
            apply(name, float(v), t, name)
    if baseline is not None:
        for name, t in th.relative_to_baseline.items():
            a, b = metrics.get(name), baseline.get(name)
            if a is not None and b is not None and _finite(a) and _finite(b) and b != 0:
                apply(name, float(a) / float(b), t, f"{name} follow-up/baseline")
    if not checked:
        return Verdict("review", ["review: no quality metric applicable"], [])
    return Verdict(status, reasons, checked)
