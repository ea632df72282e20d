"""Reports of a finished run: per-visit HTML reports, the trial safety table
(CSV + HTML) and the index page, all under ``OUT/reports/`` (see docs/report.md).

``OUT/reports/`` is self-contained: every picture a page shows is copied
(hard-linked when possible) beside it and referenced by a relative path, so
the folder can be moved or zipped as a whole and opened offline.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from mri_safety import __version__
from mri_safety.report import (
    build_visit_context,
    latest_decisions,
    load_decisions,
    plot_qc_trend,
    plot_volumes,
    render_index,
    render_safety_table,
    render_visit_report,
    safety_csv,
    safety_rows,
    scrub_paths,
)
from mri_safety.report.safety import series_label
from pipelines.cache import link_or_copy

log = logging.getLogger(__name__)

DECISIONS = Path("review") / "decisions.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _qc_doc(out: Path, series: dict[str, Any]) -> dict[str, Any]:
    m = series.get("qc_manifest")
    if not m:
        return {}
    return _read_json(out / Path(m).parent / "qc.json") or {}


def _morph_rows(entries: list[dict[str, Any]]) -> tuple[
        dict[tuple[str, str], list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Per-visit table rows and per-subject plot points from ``morphometry.json``."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    points: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        key = (str(e["subject"]), str(e["visit"]))
        series = Path(str(e.get("series", ""))).name
        if "error" in e:
            rows[key].append({"quantity": f"{e['region']} measurement", "value": "failed",
                              "unit": "", "series": series, "note": scrub_paths(e["error"])})
            continue
        r = e["result"]
        label = f"{e['region']} {e.get('contrast')}"
        if e["region"] == "brain":
            items = [("brain_volume", "brain volume", r.get("brain_mm3"), "mm3", ""),
                     ("ventricle_volume", "ventricle volume", r.get("ventricles_mm3"), "mm3",
                      f"CSF {r.get('csf')} on {e.get('contrast')}")]
        else:
            note = r.get("reason") or (f"{r.get('n_slices_c2c3')} slices; levels found: "
                                       f"{', '.join(r.get('levels', []))}")
            margin = float(r.get("level_score", 0.0)) - float(r.get("level_runner_up", 0.0))
            if margin < 0.01:
                note += (f"; level identity ambiguous (NMI {r.get('level_score', 0):.4f} vs "
                         f"{r.get('level_runner_up', 0):.4f} one level away)")
            items = [("cord_csa_c2c3", "cord CSA at C2-C3", r.get("csa_c2c3_mm2"), "mm2", note)]
        for q, name, value, unit, note in items:
            rows[key].append({"quantity": name, "unit": unit.replace("mm3", "mm³")
                              .replace("mm2", "mm²"), "series": series, "note": note,
                              "value": "n/a" if value is None else f"{value:,.0f}"
                              if unit == "mm3" else f"{value:.1f}"})
            points[key[0]].append({"quantity": q, "value": value, "visit": key[1],
                                   "series": label, "manifest": e.get("manifest")})
    return rows, points


def _provenance(out: Path, v: dict[str, Any], software: str,
                morph: list[dict[str, Any]]) -> dict[str, Any]:
    manifests = [s["qc_manifest"] for s in v.get("series", []) if s.get("qc_manifest")]
    for c in v.get("comparisons", []):
        manifests += [c[k] for k in ("register_manifest", "manifest") if c.get(k)]
    manifests += [e["manifest"] for e in morph if e.get("manifest")]
    prov: dict[str, Any] = {"software": software}
    first = None
    for m in manifests:
        doc = _read_json(out / m)
        if doc:
            first = first or doc
    if first:
        prov["code version"] = str(first.get("code_version", ""))
        prov["packages"] = {k: str(x) for k, x in sorted(first.get("packages", {}).items())}
    inputs: dict[str, str] = {}
    for c in v.get("comparisons", []):
        doc = _read_json(out / c["manifest"]) if c.get("manifest") else None
        for item in (doc or {}).get("inputs", {}).values():
            inputs[Path(str(item.get("path", ""))).name] = str(item.get("sha256", ""))[:16]
    if inputs:
        prov["compared images (sha256, first 16 hex)"] = inputs
    prov["stage manifests (under the run folder)"] = [scrub_paths(m) for m in manifests]
    prov["pipeline outputs"] = ("visit_summary.json: visits/sub-{s}/ses-{v}/; stage outputs: "
                                "work/<stage>/<digest>/").format(s=v.get("subject"),
                                                                 v=v.get("visit"))
    return prov


def _visit_report(job: dict[str, Any]) -> str:
    """Write one visit's ``report.html`` and its pictures under
    ``OUT/reports/sub-S/ses-V/``; returns its path relative to ``OUT/reports``."""
    out, v = Path(job["out"]), job["v"]
    key = (str(v["subject"]), str(v["visit"]))
    rel = f"sub-{key[0]}/ses-{key[1]}"
    vdir = out / "reports" / rel
    assets = vdir / "assets"
    images: dict[str, str] = {}
    for c in v.get("comparisons", []):
        ev = c.get("evidence")
        if not ev or not (out / ev).is_dir():
            continue
        for png in sorted((out / ev).glob("*.png")):
            dst = assets / Path(ev).name / png.name
            link_or_copy(png, dst)
            images[f"{ev}/{png.name}"] = str(dst.relative_to(vdir))
    plots = {}
    if job["qc_points"]:
        plot_qc_trend(job["qc_points"], assets / "qc_trend.png", job["days"])
        plots["QC metrics"] = "assets/qc_trend.png"
    if job["morph_points"]:
        plot_volumes(job["morph_points"], assets / "volumes.png", job["days"])
        plots["volumes"] = "assets/volumes.png"
    ctx = build_visit_context(v, job["qc_docs"], images, plots, job["morph_rows"],
                              _provenance(out, v, job["software"], job["morph"]),
                              job["decision"])
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "report.html").write_text(render_visit_report(ctx), encoding="utf-8")
    return f"{rel}/report.html"


def write_reports(out: Path | str, client: Any = None) -> dict[str, Any]:
    """Write ``OUT/reports/`` from the run folder ``out`` (visit summaries, QC
    documents, evidence pictures, ``morphometry.json``, ``run_summary.json``,
    ``review/decisions.json`` when present); with a Dask ``client`` the visit
    reports are rendered on its workers. Returns what was written:
    ``{"index", "safety_csv", "safety_html", "reports": [...], "decisions_error"}``.

    An invalid decisions file does not stop the reports: its error is shown on
    the safety table and index pages and returned; visits then stay pending.
    """
    out = Path(out)
    reports = out / "reports"
    if reports.exists():
        shutil.rmtree(reports)
    reports.mkdir(parents=True)
    run = _read_json(out / "run_summary.json") or {}
    software = str(run.get("software") or f"mri-safety {__version__}")
    failures = [scrub_paths(f) for f in run.get("failures", [])]
    visits = [d for p in sorted(out.glob("visits/sub-*/ses-*/visit_summary.json"))
              if (d := _read_json(p))]
    decisions_error = ""
    try:
        decs = load_decisions(out / DECISIONS)
    except ValueError as exc:
        decisions_error = scrub_paths(str(exc))
        log.error("%s", exc)
        decs = []
    in_force = latest_decisions(decs)
    if decisions_error:
        note = f"INVALID, ignored: {decisions_error}"
    elif (out / DECISIONS).exists():
        note = f"{len(decs)} decisions read from review/decisions.json"
    else:
        note = "none yet (review/decisions.json absent)"
    morph_entries = _read_json(out / "morphometry.json") or []
    morph_rows, morph_points = _morph_rows(morph_entries)

    days = {(str(v["subject"]), str(v["visit"])): v.get("days_from_dosing") for v in visits}
    qc_points: dict[str, list[dict[str, Any]]] = defaultdict(list)
    qc_docs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for v in visits:
        key = (str(v["subject"]), str(v["visit"]))
        docs = {}
        for s in v.get("series", []):
            doc = _qc_doc(out, s)
            if s.get("output") and doc:
                docs[str(s["output"])] = doc
                qc_points[key[0]].append({"series": series_label(s), "visit": key[1],
                                          "days": days[key],
                                          "metrics": doc.get("metrics", {})})
        qc_docs[key] = docs
    for subj, pts in morph_points.items():
        for p in pts:
            p["days"] = days.get((subj, p["visit"]))

    jobs = []
    for v in visits:
        key = (str(v["subject"]), str(v["visit"]))
        d = in_force.get(key)
        jobs.append(dict(
            out=out, v=v, qc_docs=qc_docs[key], qc_points=qc_points.get(key[0], []),
            morph_points=morph_points.get(key[0], []), days=days[key],
            morph_rows=morph_rows.get(key, []), software=software,
            morph=[e for e in morph_entries if (e["subject"], e["visit"]) == key],
            decision=d.model_dump(mode="json") if d else None))
    # one visit's report (2 matplotlib plots + HTML) costs ~0.5 s: on the run's
    # Dask client the visits are rendered in parallel instead of in a serial tail
    if client is not None:
        done = client.gather(client.map(_visit_report, jobs, pure=False))
    else:
        done = [_visit_report(j) for j in jobs]
    links = {(str(v["subject"]), str(v["visit"])): rel for v, rel in zip(visits, done,
                                                                         strict=True)}
    written = [f"reports/{rel}" for rel in done]

    rows = safety_rows(visits, in_force, links)
    (reports / "safety_table.csv").write_text(safety_csv(rows), encoding="utf-8")
    (reports / "safety_table.html").write_text(render_safety_table(rows, note), encoding="utf-8")
    if decisions_error:
        failures = [*failures, f"decisions file: {decisions_error}"]
    (reports / "index.html").write_text(render_index(rows, software, failures), encoding="utf-8")
    return {"index": str(reports / "index.html"), "safety_csv": str(reports / "safety_table.csv"),
            "safety_html": str(reports / "safety_table.html"), "reports": written,
            "decisions_error": decisions_error}


def finish_reports(out: Path | str, client: Any = None,
                   failures: list[str] | None = None) -> dict[str, Any]:
    """End of ``run_trial``: the morphometry stage, then :func:`write_reports`.

    A failure here is logged and appended to ``failures`` (the run's outputs
    stay as they are); it never raises.
    """
    from pipelines.morphometry import run_morphometry

    try:
        run_morphometry(out, client)
    except Exception as exc:  # reports are still written without volumes
        log.error("morphometry failed: %s", exc)
        if failures is not None:
            failures.append(f"morphometry: {exc}")
    try:
        return write_reports(out, client)
    except Exception as exc:
        log.exception("reports failed")
        if failures is not None:
            failures.append(f"reports: {exc}")
        return {"error": str(exc)}
