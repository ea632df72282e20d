"""The whole-trial Dask graph: DICOM tree -> per-visit candidate summaries.

Graph (one task per box; arrows are data dependencies)::

    plan (driver, headers only)
      -> convert[series]                      (one per series)
      -> compare[follow-up series vs baseline counterpart]
         compare[follow-up series vs previous-visit counterpart]
      -> visit summary (driver) -> trial summary (driver)

Every task is a :class:`~pipelines.cache.StageStore` stage, so a re-run skips
what is finished (keyed by input content, parameters, code version), a killed
worker never leaves a trusted half-written output, and every output folder
has a provenance manifest. The stage functions never know where they run:
local cluster, an existing scheduler or SLURM (see :mod:`pipelines.cluster`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mri_safety import __version__
from mri_safety.change.params import load_params
from mri_safety.config import Config, load_config
from mri_safety.dicom.deid import Deidentifier
from mri_safety.qc.config import load_qc_config
from pipelines.cache import StageResult, StageStore, canonical_json, file_digest
from pipelines.convert import (
    SeriesPlan,
    SeriesReport,
    convert_planned,
    plan_conversion,
)

log = logging.getLogger(__name__)

#: classification region -> compare region
COMPARE_REGION = {"brain": "brain", "cervical": "spine", "thoracic": "spine",
                  "lumbar": "spine", "spine": "spine"}
#: classification contrast -> compare contrast (others are converted, not compared)
COMPARE_CONTRAST = {"FLAIR": "flair", "T2w": "t2w", "T1w": "t1w", "PD": "pd",
                    "T2starw": "t2starw", "SWI": "swi", "DWI": "dwi", "ADC": "adc"}


# --------------------------------------------------------------------------
# stage functions (module level so workers can unpickle them)


def convert_series_stage(
    inputs: dict[str, Path], out: Path, plan: SeriesPlan, deid: Deidentifier
) -> dict[str, Any]:
    """Convert one planned series into ``out`` (BIDS-relative layout)."""
    row = convert_planned(plan, out, deid)
    return asdict(row)


def qc_stage(inputs: dict[str, Path], out: Path, qc: dict[str, Any]) -> dict[str, Any]:
    """Image quality metrics and verdict of one converted series -> qc.json."""
    import nibabel as nib

    from mri_safety.qc.assess import assess_nifti
    from mri_safety.qc.config import QCConfig
    from mri_safety.qc.verdict import qc_verdict

    cfg = QCConfig.model_validate(qc)
    side = json.loads(inputs["sidecar"].read_text())
    metrics = assess_nifti(nib.load(inputs["image"]), side)
    verdict = qc_verdict(metrics.as_dict(), thresholds=cfg.verdict)
    doc = {"metrics": metrics.as_dict(), "not_applicable": metrics.reasons(),
           "verdict": verdict.status, "verdict_reasons": verdict.reasons}
    (out / "qc.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    return {"verdict": verdict.status}


def _location_text(loc: Any) -> str:
    """Short location for titles: the values of a location dict, e.g.
    ``brain deep left`` or ``spine C3``."""
    if isinstance(loc, dict):
        return " ".join(str(v) for k, v in loc.items() if not isinstance(v, float | int))
    return str(loc or "")


def evidence_stage(
    inputs: dict[str, Path], out: Path, candidates: list[dict[str, Any]]
) -> dict[str, Any]:
    """Montage PNG per flagged candidate and a registration check picture."""
    import nibabel as nib

    from mri_safety.evidence.montage import MontageCandidate, render_montage
    from mri_safety.evidence.regcheck import render_regcheck

    base: Any = nib.load(inputs["baseline"])
    fu: Any = nib.load(inputs["followup_in_baseline"])
    z: Any = nib.load(inputs["zmap"])
    render_regcheck(base, fu, out / "regcheck.png")
    pictures = []
    for c in candidates:
        cand = MontageCandidate(
            id=str(c["id"]), type=str(c["type"]),
            centroid_ras_mm=tuple(float(v) for v in c["centroid_ras_mm"]),  # type: ignore[arg-type]
            volume_mm3=float(c["volume_mm3"]), location=_location_text(c.get("location")),
            score=float(c["score"]))
        name = f"candidate-{c['id']}.png"
        render_montage(base, fu, z, cand, out / name, diff_limit=5.0,
                       diff_label="z (follow-up - baseline)")
        pictures.append(name)
    return {"montages": pictures}


def compare_stage(
    inputs: dict[str, Path], out: Path, region: str, contrast: str,
    detection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Candidates for one follow-up/baseline pair (``mri-safety compare``).

    ``detection`` (the validated ``configs/detection.yaml``) is here so that
    the cache key changes with it; compare_main reads the same file."""
    from mri_safety.change.compare import compare_main

    doc = compare_main(inputs["baseline"], inputs["followup"], out, region=region,
                       contrast=contrast)
    return {
        "n_candidates": len(doc["candidates"]),
        "n_flagged": sum(1 for c in doc["candidates"] if c.get("flagged")),
        "registration_status": doc.get("registration", {}).get("status"),
    }


def _run_convert(root: str, plan: SeriesPlan, deid: Deidentifier, key: dict[str, str]
                 ) -> StageResult:
    return StageStore(root).run("convert", convert_series_stage, {}, {},
                                extra_key=key, context={"plan": plan, "deid": deid})


def _run_qc(root: str, image: Path, sidecar: Path, qc: dict[str, Any]) -> StageResult:
    return StageStore(root).run("qc", qc_stage, {"image": image, "sidecar": sidecar},
                                {"qc": qc})


def _run_compare(root: str, baseline: Path, followup: Path, region: str, contrast: str,
                 detection: dict[str, Any]) -> StageResult:
    return StageStore(root).run("compare", compare_stage,
                                {"baseline": baseline, "followup": followup},
                                {"region": region, "contrast": contrast,
                                 "detection": detection})


def _run_evidence(root: str, compare: StageResult, baseline: Path) -> StageResult:
    doc = json.loads((compare.path / "candidates.json").read_text())
    flagged = [c for c in doc["candidates"] if c.get("flagged")]
    return StageStore(root).run(
        "evidence", evidence_stage,
        {"baseline": baseline,
         "followup_in_baseline": compare.path / "followup_in_baseline.nii.gz",
         "zmap": compare.path / "zmap.nii.gz"},
        {"candidates": flagged})


# --------------------------------------------------------------------------
# planning helpers (driver side, cheap)


def series_digest(plan: SeriesPlan) -> str:
    """Content digest of a series' DICOM files (sorted by path)."""
    h = hashlib.sha256()
    for rec in sorted(plan.group.instances, key=lambda r: r.path):
        h.update(file_digest(Path(rec.path)).encode())
    return h.hexdigest()


def plan_digest(plan: SeriesPlan, secret: bytes) -> str:
    """Digest of every planned decision that shapes the converted output."""
    return hashlib.sha256(canonical_json({
        "name": plan.name,
        "visit": asdict(plan.visit),
        "classification": {k: getattr(plan.cls, k) for k in
                           ("region", "contrast", "post_contrast", "acq", "orientation",
                            "rule", "reasons")},
        "dosing": plan.dosing_date,
        "first_study": plan.first_study_date,
        "secret": hashlib.sha256(secret).hexdigest(),
    }).encode()).hexdigest()


@dataclass
class Pair:
    """A follow-up series compared with an earlier counterpart."""

    subject: str
    visit: str
    reference_visit: str
    kind: str  # "baseline" | "previous"
    region: str
    contrast: str
    baseline_name: str
    followup_name: str


def _days(row: SeriesReport, plans: dict[str, SeriesPlan]) -> int:
    d = plans[row.key].visit.days_from_dosing
    return d if d is not None else 0


def pairs_for(rows: list[SeriesReport], plans: dict[str, SeriesPlan]) -> list[Pair]:
    """Comparisons to run: each converted follow-up series against the
    matching series (same region, contrast, contrast agent) of the baseline
    visit and, when different, of the previous visit."""
    by_subject: dict[str, list[SeriesReport]] = defaultdict(list)
    for r in rows:
        if r.status == "converted" and r.contrast in COMPARE_CONTRAST:
            by_subject[r.subject].append(r)
    out: list[Pair] = []
    for subject, srows in by_subject.items():
        visits = sorted({(_days(r, plans), r.session) for r in srows})
        order = [v for _, v in visits]
        base = "baseline" if "baseline" in order else order[0]

        def match(visit: str, like: SeriesReport,
                  srows: list[SeriesReport] = srows) -> SeriesReport | None:
            cands = [r for r in srows if r.session == visit and r.region == like.region
                     and r.contrast == like.contrast and r.post_contrast == like.post_contrast]
            cands.sort(key=lambda r: (r.acq != like.acq, r.output))
            return cands[0] if cands else None

        for r in srows:
            if r.session == base:
                continue
            idx = order.index(r.session)
            refs = [("baseline", base)]
            if idx >= 1 and order[idx - 1] != base:
                refs.append(("previous", order[idx - 1]))
            for kind, ref_visit in refs:
                ref = match(ref_visit, r)
                if ref is None:
                    continue
                out.append(Pair(subject, r.session, ref_visit, kind,
                                COMPARE_REGION.get(r.region, "brain"),
                                COMPARE_CONTRAST[r.contrast], ref.output, r.output))
    return out


# --------------------------------------------------------------------------
# the run


@dataclass
class TrialSummary:
    """What a run did (also written as ``OUT/run_summary.json``)."""

    visits: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return sum(v["n_flagged"] for v in self.visits.values())


def _publish(src_root: Path, rel: str, dest_root: Path) -> None:
    """Hard-link (or copy) a stage output file into the published tree."""
    src, dst = src_root / rel, dest_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_trial(
    dicom_dir: Path | str,
    out: Path | str,
    client: Any,
    *,
    secret: bytes,
    enrolment: Path | str | None = None,
    config: Config | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrialSummary:
    """Run the trial graph on a Dask ``client`` and write ``out``:

    * ``out/bids/`` the de-identified BIDS tree (links to stage outputs),
    * ``out/work/<stage>/<digest>/`` stage outputs with ``manifest.json``,
    * ``out/visits/sub-*/ses-*/visit_summary.json`` candidates per visit,
      each linked to the manifest that produced it,
    * ``out/conversion_report.{json,tsv}`` and ``out/run_summary.json``.

    ``progress(stage, done, total)`` is called as tasks finish.
    """
    from distributed import as_completed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    store = StageStore(work)
    store.clean_partial()
    config = config or load_config(None)
    deid = Deidentifier(secret)
    report, plan_list = plan_conversion(dicom_dir, deid=deid, enrolment=enrolment,
                                        config=config)
    plans = {p.group.key: p for p in plan_list}
    summary = TrialSummary()

    # convert: one task per series
    futs = {}
    for p in plan_list:
        key = {"series": series_digest(p), "plan": plan_digest(p, secret)}
        futs[client.submit(_run_convert, str(work), p, deid, key, pure=False)] = p
    results: dict[str, StageResult] = {}
    for done, fut in enumerate(as_completed(list(futs)), start=1):
        p = futs[fut]
        try:
            res: StageResult = fut.result()
        except Exception as exc:  # a crashed task fails its series only
            p.row.status, p.row.errors = "failed", [f"{p.group.first.path}: {exc}"]
        else:
            results[p.group.key] = res
            row = res.manifest["summary"]
            p.row.status, p.row.output = row["status"], row["output"]
            p.row.warnings, p.row.errors = row["warnings"], row["errors"]
            if p.row.status == "converted":
                for rel in res.manifest["outputs"]:
                    _publish(res.path, rel, out / "bids")
            (summary.computed if res.computed else summary.reused)["convert"] = (
                (summary.computed if res.computed else summary.reused).get("convert", 0) + 1)
        if progress:
            progress("convert", done, len(futs))
    report.series = [r for r in report.series if r.key not in plans] + [
        p.row for p in plan_list]
    report.write(out)

    rows = [p.row for p in plan_list]
    by_name = {p.row.output: results[p.group.key] for p in plan_list
               if p.row.status == "converted"}

    def count(stage: str, res: StageResult) -> None:
        bucket = summary.computed if res.computed else summary.reused
        bucket[stage] = bucket.get(stage, 0) + 1

    # QC: one task per converted series; an unusable series is not compared
    qc_cfg = load_qc_config().model_dump(mode="json")
    qfuts = {}
    for name, res in by_name.items():
        side = res.path / name.replace(".nii.gz", ".json")
        qfuts[client.submit(_run_qc, str(work), res.path / name, side, qc_cfg,
                            pure=False)] = name
    qc: dict[str, dict[str, Any]] = {}
    for done, fut in enumerate(as_completed(list(qfuts)), start=1):
        name = qfuts[fut]
        try:
            qres: StageResult = fut.result()
            count("qc", qres)
            qc[name] = json.loads((qres.path / "qc.json").read_text())
            qc[name]["manifest"] = str((qres.path / "manifest.json").relative_to(out))
        except Exception as exc:
            summary.failures.append(f"qc {name}: {exc}")
            qc[name] = {"verdict": "review", "verdict_reasons": [f"QC failed: {exc}"]}
        if progress:
            progress("qc", done, len(qfuts))
    usable = [r for r in rows if r.status != "converted"
              or qc.get(r.output, {}).get("verdict") != "unusable"]

    # compare: each follow-up against baseline and previous visit
    detection = load_params().model_dump(mode="json")
    pairs = pairs_for(usable, plans)
    cfuts = {}
    for pair in pairs:
        b = by_name[pair.baseline_name].path / pair.baseline_name
        f = by_name[pair.followup_name].path / pair.followup_name
        cfuts[client.submit(_run_compare, str(work), b, f, pair.region, pair.contrast,
                            detection, pure=False)] = pair
    compared: list[tuple[Pair, StageResult | None, str]] = []
    for done, fut in enumerate(as_completed(list(cfuts)), start=1):
        pair = cfuts[fut]
        try:
            cres: StageResult = fut.result()
            compared.append((pair, cres, ""))
            count("compare", cres)
        except Exception as exc:
            msg = f"compare {pair.followup_name} vs {pair.baseline_name}: {exc}"
            summary.failures.append(msg)
            compared.append((pair, None, msg))
        if progress:
            progress("compare", done, len(cfuts))

    # evidence: montages of flagged candidates + registration check per pair
    efuts = {}
    for pair, done_cmp, _ in compared:
        if done_cmp is not None:
            b = by_name[pair.baseline_name].path / pair.baseline_name
            efuts[client.submit(_run_evidence, str(work), done_cmp, b, pure=False)] = pair
    evidence: dict[tuple[str, str], str] = {}
    for done, fut in enumerate(as_completed(list(efuts)), start=1):
        pair = efuts[fut]
        try:
            eres: StageResult = fut.result()
            count("evidence", eres)
            evidence[(pair.followup_name, pair.baseline_name)] = str(
                eres.path.relative_to(out))
        except Exception as exc:
            summary.failures.append(f"evidence {pair.followup_name}: {exc}")
        if progress:
            progress("evidence", done, len(efuts))

    sidecars = {name: json.loads((res.path / name.replace(".nii.gz", ".json")).read_text())
                for name, res in by_name.items()}
    _write_visit_summaries(out, rows, plans, compared, summary, qc, evidence, sidecars)
    summary.failures.extend(
        f"{r.source}: {'; '.join(r.errors)}" for r in report.series if r.status == "failed")
    summary.failures.extend(report.visit_errors)
    (out / "run_summary.json").write_text(json.dumps({
        "software": f"mri-safety {__version__}",
        "visits": summary.visits,
        "failures": summary.failures,
        "computed": summary.computed,
        "reused": summary.reused,
    }, indent=2, sort_keys=True))
    from pipelines.report import finish_reports  # morphometry + OUT/reports/ (docs/report.md)
    finish_reports(out, client, summary.failures)
    return summary


def _write_visit_summaries(
    out: Path,
    rows: list[SeriesReport],
    plans: dict[str, SeriesPlan],
    compared: list[tuple[Pair, StageResult | None, str]],
    summary: TrialSummary,
    qc: dict[str, dict[str, Any]],
    evidence: dict[tuple[str, str], str],
    sidecars: dict[str, dict[str, Any]],
) -> None:
    from mri_safety.qc.protocol import compare_protocol

    visits: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if not r.subject:
            continue
        v = visits.setdefault((r.subject, r.session), {
            "subject": r.subject, "visit": r.session,
            "days_from_dosing": plans[r.key].visit.days_from_dosing,
            "series": [], "comparisons": [], "n_flagged": 0, "not_assessable": [],
        })
        q = qc.get(r.output, {})
        if r.status != "converted" or q.get("verdict") == "unusable":
            v["not_assessable"].append(r.output or r.source)
        v["series"].append({"output": r.output, "source": r.source, "status": r.status,
                            "qc_verdict": q.get("verdict"),
                            "qc_reasons": q.get("verdict_reasons", []),
                            "qc_manifest": q.get("manifest"),
                            "region": r.region,
                            "contrast": r.contrast, "post_contrast": r.post_contrast,
                            "errors": r.errors})
    for pair, res, err in sorted(compared, key=lambda t: (t[0].followup_name, t[0].kind)):
        v = visits[(pair.subject, pair.visit)]
        entry: dict[str, Any] = {**asdict(pair), "error": err}
        proto = compare_protocol(sidecars[pair.baseline_name], sidecars[pair.followup_name])
        entry["protocol_deviations"] = [asdict(d) for d in proto.deviations]
        entry["protocol_confidence"] = proto.confidence
        entry["evidence"] = evidence.get((pair.followup_name, pair.baseline_name))
        if res is not None:
            doc = json.loads((res.path / "candidates.json").read_text())
            manifest = str((res.path / "manifest.json").relative_to(out))
            entry.update({
                "manifest": manifest,
                "registration": doc.get("registration"),
                "candidates": [{**c, "manifest": manifest} for c in doc["candidates"]],
            })
            v["n_flagged"] += sum(1 for c in doc["candidates"] if c.get("flagged"))
        v["comparisons"].append(entry)
    for (subject, visit), v in sorted(visits.items()):
        problems = v["not_assessable"] or any(c.get("error") for c in v["comparisons"])
        if visit == "baseline":
            v["status"] = "baseline"
        elif v["n_flagged"]:
            v["status"] = "candidates flagged"
        elif not any(c.get("candidates") is not None for c in v["comparisons"]):
            v["status"] = "not assessable"
        elif problems:
            v["status"] = "incomplete"
        else:
            v["status"] = "no candidates flagged: full read and sign-off still needed"
        d = out / "visits" / f"sub-{subject}" / f"ses-{visit}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "visit_summary.json").write_text(json.dumps(v, indent=2, sort_keys=True))
        summary.visits[f"sub-{subject}/ses-{visit}"] = {
            "status": v["status"], "n_flagged": v["n_flagged"],
            "days_from_dosing": v["days_from_dosing"]}
