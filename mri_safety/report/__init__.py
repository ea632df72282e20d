"""HTML visit reports, the trial safety table and the index page (pure: dicts in,
HTML strings / PNG files out). See docs/report.md."""

from mri_safety.report.context import build_visit_context, finding_id, scrub_paths
from mri_safety.report.decisions import Decision, latest_decisions, load_decisions
from mri_safety.report.plots import plot_qc_trend, plot_volumes
from mri_safety.report.render import render_index, render_safety_table, render_visit_report
from mri_safety.report.safety import SAFETY_COLUMNS, new_finding, safety_csv, safety_rows

__all__ = ["SAFETY_COLUMNS", "Decision", "build_visit_context", "finding_id", "latest_decisions",
           "load_decisions", "new_finding", "plot_qc_trend", "plot_volumes", "render_index",
           "render_safety_table", "render_visit_report", "safety_csv", "safety_rows",
           "scrub_paths"]
