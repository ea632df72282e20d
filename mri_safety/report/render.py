"""Jinja2 rendering of the visit report, safety table and index (package templates,
autoescape on, inline CSS, no external URLs: pages work offline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import groupby
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from mri_safety.report.safety import SAFETY_COLUMNS


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment on ``mri_safety/report/templates`` (autoescape on)."""
    return Environment(
        loader=PackageLoader("mri_safety.report", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


def render_visit_report(ctx: Mapping[str, Any]) -> str:
    """HTML of one visit report from :func:`~mri_safety.report.context.build_visit_context`."""
    return environment().get_template("visit.html").render(**ctx)


def render_safety_table(rows: Sequence[Mapping[str, Any]],
                        decisions_note: str = "none yet") -> str:
    """HTML page of the safety table (rows from :func:`~mri_safety.report.safety.safety_rows`)."""
    return environment().get_template("safety.html").render(
        rows=rows, columns=SAFETY_COLUMNS, decisions_note=decisions_note,
        n_subjects=len({r["subject"] for r in rows}))


def render_index(rows: Sequence[Mapping[str, Any]], software: str = "mri-safety",
                 failures: Sequence[str] = ()) -> str:
    """Index page linking every visit report, grouped by subject (rows as for
    the safety table, each with its ``report`` link)."""
    subjects = [(s, list(g)) for s, g in groupby(rows, key=lambda r: r["subject"])]
    return environment().get_template("index.html").render(
        subjects=subjects, n_visits=len(rows), software=software, failures=list(failures))
