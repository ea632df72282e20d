"""Template context of one visit report, built from the visit summary
(``OUT/visits/sub-*/ses-*/visit_summary.json``) and the QC documents.

Everything here is pure: the caller (``pipelines/report.py``) reads files,
copies pictures and passes their report-relative paths in.

No PHI reaches the context: subjects are the pseudonymised labels and visits
the session names written by the converter; DICOM source paths (which may
carry names in folder names) are never shown, and absolute paths inside error
messages are cut to their last component (:func:`scrub_paths`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from mri_safety.change.candidates import location_words
from mri_safety.change.grouping import comparison_key
from mri_safety.report.safety import series_label
from mri_safety.report.volume_change import volume_change_candidates, volume_change_rows

#: QC metrics shown in the series table (name, label, better direction)
QC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("snr_local", "SNR (local)"), ("snr_dietrich", "SNR (Dietrich)"), ("cnr", "CNR"),
    ("cjv", "CJV"), ("efc", "EFC"), ("fov_coverage", "FOV coverage"),
)

FULL_READ = ("A radiologist must read every series of this visit in full and sign off, "
             "whether or not candidates are flagged: the pipeline helps to look, it does "
             "not make a diagnosis.")
ZERO_CANDIDATES = ("No candidates flagged. This does not mean there is no new abnormality: "
                   "this visit still needs a full read and sign-off.")

_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?(?:/[^\s/:;,'\"()\[\]]+){2,}/?")


def scrub_paths(text: str) -> str:
    """Replace absolute file paths in ``text`` by ``.../<last component>``
    (folder names of DICOM exports may contain patient names)."""
    return _PATH.sub(lambda m: ".../" + PurePosixPath(m.group(0).rstrip("/")).name,
                     str(text))


def finding_id(comparison: Mapping[str, Any], candidate: Mapping[str, Any]) -> str:
    """Stable id of a candidate within its visit, e.g. ``brain-flair-vs-baseline-c2``
    (region, contrast, reference visit, candidate id of that comparison); the
    review app's decisions use it in ``finding_ids``. A ``finding_id`` already
    carried by the candidate (tracking across visits) is used as is."""
    if candidate.get("finding_id"):
        return str(candidate["finding_id"])
    return (f"{comparison.get('region')}-{comparison.get('contrast')}-vs-"
            f"{comparison.get('reference_visit')}-c{candidate.get('id')}")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def comparison_label(c: Mapping[str, Any]) -> str:
    """``brain flair vs baseline`` / ``spine t2w vs 24h (previous visit)``."""
    ref = c.get("reference_visit")
    kind = " (previous visit)" if c.get("kind") == "previous" else ""
    return f"{c.get('region')} {c.get('contrast')} vs {ref}{kind}"


def build_visit_context(
    summary: Mapping[str, Any],
    qc_docs: Mapping[str, Mapping[str, Any]] | None = None,
    images: Mapping[str, str] | None = None,
    plots: Mapping[str, str] | None = None,
    morphometry: Sequence[Mapping[str, Any]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    decision: Mapping[str, Any] | None = None,
    index_href: str = "../../index.html",
) -> dict[str, Any]:
    """Context for ``visit.html``.

    ``qc_docs``: series output name -> ``qc.json`` dict. ``images``:
    ``"<evidence folder>/<file>"`` (as in the summary) -> report-relative
    path of the copied picture; pictures not in it are listed as missing.
    ``plots``: plot name (``qc``, ``volumes``) -> report-relative path.
    ``morphometry``: rows ``{region, series, quantity, value, unit, note}``
    for this visit. ``decision``: the reviewer decision in force (dict) or None.
    """
    qc_docs = qc_docs or {}
    images = images or {}
    series = []
    for s in summary.get("series", []):
        name = str(s.get("output") or "")
        doc = qc_docs.get(name, {})
        metrics = doc.get("metrics", {}) if isinstance(doc, Mapping) else {}
        series.append({
            "label": series_label(s),
            "file": PurePosixPath(name).name if name else "(not converted)",
            "status": s.get("status", ""),
            "verdict": s.get("qc_verdict") or ("n/a" if s.get("status") != "converted"
                                               else "review"),
            "reasons": [scrub_paths(r) for r in s.get("qc_reasons", [])],
            "errors": [scrub_paths(e) for e in s.get("errors", [])],
            "metrics": [_fmt(metrics.get(k)) for k, _ in QC_COLUMNS],
        })
    comparisons, candidates, deviations = [], [], []
    # the comparisons by the name the visit summary's same_abnormality uses
    by_key = {comparison_key(c): c for c in summary.get("comparisons", [])}
    for c in summary.get("comparisons", []):
        label = comparison_label(c)
        ev = c.get("evidence")
        reg = c.get("registration") or {}
        regcheck = images.get(f"{ev}/regcheck.png") if ev else None
        devs = [{"field": d.get("field"), "baseline": _fmt(d.get("baseline"), 4),
                 "followup": _fmt(d.get("followup"), 4), "unit": d.get("unit", ""),
                 "severity": d.get("severity", ""), "note": d.get("note", ""),
                 "comparison": label} for d in c.get("protocol_deviations", [])]
        deviations.extend(devs)
        cands = c.get("candidates")
        comparisons.append({
            "label": label, "followup": PurePosixPath(str(c.get("followup_name"))).name,
            "reference": PurePosixPath(str(c.get("baseline_name"))).name,
            "registration_status": reg.get("status", "n/a" if cands is None else "unknown"),
            "registration_quality": _fmt(reg.get("quality")),
            "residual_mm": _fmt(reg.get("residual_misregistration_mm")),
            "method": reg.get("method", ""),
            "protocol_confidence": _fmt(c.get("protocol_confidence")),
            "deviations": devs, "regcheck": regcheck,
            "regcheck_missing": bool(ev) and regcheck is None,
            "error": scrub_paths(c.get("error") or ""),
            "n_candidates": None if cands is None else len(cands),
            "n_flagged": sum(1 for x in cands or [] if x.get("flagged")),
        })
        for x in cands or []:
            src = images.get(f"{ev}/candidate-{x.get('id')}.png") if ev else None
            fid = finding_id(c, x)
            candidates.append({
                "finding_id": fid, "comparison": label,
                "abnormality_id": str(x.get("abnormality_id") or fid),
                "type": str(x.get("type", "")).replace("_", " "),
                "flagged": bool(x.get("flagged")),
                "volume_mm3": _fmt(x.get("volume_mm3"), 4),
                "location": location_words(x.get("location"), with_depth=True),
                "peak_z": _fmt(x.get("peak_z")), "score": _fmt(x.get("score")),
                "reasons": [scrub_paths(r) for r in x.get("reasons", [])],
                "same_as": [finding_id(by_key.get(str(o.get("comparison")), {}),
                                       {"id": o.get("candidate_id"),
                                        "finding_id": o.get("finding_id")})
                            for o in x.get("same_abnormality", [])],
                "montage": src,
                "montage_missing": bool(x.get("flagged")) and src is None,
            })
    candidates.extend(volume_change_candidates(summary))  # ventricular enlargement
    # flagged: one abnormality's rows together (its series and reference visits)
    candidates.sort(key=lambda r: (not r["flagged"], r["abnormality_id"] if r["flagged"] else "",
                                   r["comparison"], r["finding_id"]))
    is_baseline = summary.get("status") == "baseline"
    n_flagged = int(summary.get("n_flagged", 0))
    n_distinct = int(summary.get("n_flagged_abnormalities", n_flagged))
    return {
        "title": f"sub-{summary.get('subject')} ses-{summary.get('visit')}",
        "subject": summary.get("subject"), "visit": summary.get("visit"),
        "days_from_dosing": summary.get("days_from_dosing"),
        "status": summary.get("status", ""), "is_baseline": is_baseline,
        "n_flagged": n_flagged, "n_distinct": n_distinct, "full_read": FULL_READ,
        "zero_candidates": None if is_baseline or n_flagged else ZERO_CANDIDATES,
        "not_assessable": [PurePosixPath(scrub_paths(str(x))).name
                           for x in summary.get("not_assessable", [])],
        "not_compared": [f"{PurePosixPath(scrub_paths(str(x['series']))).name}: {x['reason']}"
                         for x in summary.get("not_compared", [])],
        "qc_columns": [lab for _, lab in QC_COLUMNS],
        "series": series, "comparisons": comparisons, "deviations": deviations,
        "flagged": [x for x in candidates if x["flagged"]],
        "unflagged": [x for x in candidates if not x["flagged"]],
        "plots": dict(plots or {}),
        "morphometry": list(morphometry or []) + volume_change_rows(summary),
        "provenance": dict(provenance or {}), "decision": decision,
        "index_href": index_href,
    }
