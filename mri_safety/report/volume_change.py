"""Visit-report rows for the volume-change result of a visit summary.

A follow-up visit summary may carry ``volume_change``: entries written by
:func:`pipelines.multicontrast.volume_entry` (brain and ventricle volume change
vs baseline from the Jacobian step, ``ventricular_enlargement``, candidates).
These pure functions turn them into rows of the report's "Across visits"
table and into candidate rows (a flagged ventricular enlargement is listed
with the other flagged candidates; it has no montage).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any


def _label(e: Mapping[str, Any]) -> str:
    return f"{e.get('region')} {e.get('contrast')} volume change vs {e.get('reference_visit')}"


def _linked_note(linked: list[Mapping[str, Any]], what: str) -> str:
    """Sentence naming the candidates linked to a ventricle measurement, or ''."""
    n = sum(len(li.get("candidate_ids", [])) for li in linked)
    if not n:
        return ""
    return (f" {n} candidate(s) on tissue that became ventricular CSF are listed under "
            f"{what} (unflagged rows naming it): "
            + "; ".join(f"{li.get('comparison')}: "
                        + ", ".join(f"#{i}" for i in li.get("candidate_ids", []))
                        for li in linked) + ".")


def volume_change_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{quantity, value, unit, series, note}`` (the morphometry table's
    columns) for each ``volume_change`` entry of a visit summary."""
    rows: list[dict[str, Any]] = []
    for e in summary.get("volume_change", []) or []:
        series = PurePosixPath(str(e.get("followup_name", ""))).name
        ref = e.get("reference_visit")
        if e.get("error"):
            rows.append({"quantity": f"volume change vs {ref}", "value": "failed", "unit": "",
                         "series": series, "note": str(e["error"]).split(": ")[-1]})
            continue
        brain = e.get("brain_volume_change_pct")
        vent = e.get("ventricle_volume_change_pct")
        limit = float(e.get("atrophy_allowance_pct") or 0.0)
        if e.get("ventricular_enlargement"):
            note = "ventricular enlargement beyond atrophy: flagged (possible hydrocephalus)"
        elif vent is None:
            note = "no ventricle mask"
        else:
            note = (f"within what atrophy explains (allowance {limit:.1f}% + margin)"
                    + _linked_note(e.get("linked_candidates") or [], "this measurement"))
        rows.append({"quantity": f"brain volume change vs {ref} (Jacobian)",
                     "value": "n/a" if brain is None else f"{float(brain):+.2f}", "unit": "%",
                     "series": series, "note": "rigid + coarse deformable registration"})
        rows.append({"quantity": f"ventricle volume change vs {ref} (Jacobian)",
                     "value": "n/a" if vent is None else f"{float(vent):+.1f}", "unit": "%",
                     "series": series, "note": note})
    return rows


def volume_change_candidates(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Candidate rows (keys of :func:`mri_safety.report.context.build_visit_context`'s
    candidate rows) of the ``volume_change`` entries: no montage, the reasons
    say how it was measured."""
    out: list[dict[str, Any]] = []
    for e in summary.get("volume_change", []) or []:
        for x in e.get("candidates", []) or []:
            fid = str(x.get("finding_id") or f"brain-ventricles-vs-{e.get('reference_visit')}")
            out.append({
                "finding_id": fid, "comparison": _label(e),
                "abnormality_id": str(x.get("abnormality_id") or fid),
                "type": str(x.get("type", "")).replace("_", " "),
                "flagged": bool(x.get("flagged")),
                "volume_mm3": f"{float(x.get('volume_mm3') or 0.0):.4g}",
                "location": "ventricular system",
                "peak_z": "n/a", "score": f"{float(x.get('score') or 0.0):.3g}",
                "reasons": [str(r) for r in x.get("reasons", [])],
                "montage": None, "montage_missing": False,
                "note": "No picture: a measurement of the whole ventricular system (see the "
                        "volume change rows under Across visits)."
                        + _linked_note(x.get("linked_candidates") or [], "this finding"),
            })
    return out
