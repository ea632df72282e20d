"""Morphometry stage: brain / ventricle volume per brain visit and cord CSA at
C2-C3 per spine visit (:mod:`mri_safety.morphometry`), one cached
:class:`~pipelines.cache.StageStore` stage per chosen series.

Series choice per visit and region (converted, QC not unusable): brain: a 3D
T1w without contrast agent, else FLAIR, else T2w; spine: T2w (cervical), else
T1w. The index of what was measured is ``OUT/morphometry.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipelines.cache import StageResult, StageStore

log = logging.getLogger(__name__)

SPINE_REGIONS = ("cervical", "spine", "thoracic")
#: library code of the stage (part of its cache key: an edited mask or volume rule re-runs)
CODE_DEPS = ("mri_safety.morphometry", "mri_safety.preprocess", "mri_safety.register",
             "mri_safety.distance")
#: ITK threads of the morphometry stage (a parameter: part of the cache key)
THREADS = 2


def morphometry_stage(inputs: dict[str, Path], out: Path, region: str,
                      contrast: str, threads: int = 2) -> dict[str, Any]:
    """Measure one series -> ``morphometry.json`` (volumes mm^3, areas mm^2).

    ITK's default thread count is set to ``threads`` while measuring (some ITK
    filters' results depend on it in the last digits: 1 vs 2 threads moved the
    brain volume by 0.003 %), so the output does not depend on the worker."""

    from mri_safety.morphometry import brain_volumes, cord_area
    from mri_safety.register.transforms import load_image
    from mri_safety.threads import itk_threads

    with itk_threads(threads):
        img = load_image(inputs["image"])
        if region == "brain":
            doc: dict[str, Any] = {"region": "brain", "contrast": contrast,
                                   **brain_volumes(img, contrast).as_dict()}
        else:
            doc = {"region": "spine", "contrast": contrast,
                   **cord_area(img, "t2" if contrast == "T2w" else "t1").as_dict()}
    (out / "morphometry.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    return {k: v for k, v in doc.items() if k not in ("per_slice", "slices_c2c3", "method")}


def _run_morphometry(root: str, image: Path, region: str, contrast: str) -> StageResult:
    return StageStore(root).run("morphometry", morphometry_stage, {"image": image},
                                {"region": region, "contrast": contrast, "threads": THREADS},
                                code_deps=CODE_DEPS)


def _rank(s: dict[str, Any], region: str) -> tuple[int, str] | None:
    if s.get("status") != "converted" or s.get("qc_verdict") == "unusable":
        return None
    c, post, name = s.get("contrast"), bool(s.get("post_contrast")), str(s.get("output"))
    if region == "brain" and s.get("region") == "brain" and not post:
        order = ["T1w3d", "T1w", "FLAIR", "T2w"]
        key = f"{c}3d" if c == "T1w" and "3d" in name.lower() else str(c)
        return (order.index(key), name) if key in order else None
    if region == "spine" and s.get("region") in SPINE_REGIONS and not post:
        return ({"T2w": 0, "T1w": 1}[str(c)], name) if c in ("T2w", "T1w") else None
    return None


def choose_series(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The series measured per region (``brain``, ``spine``) of one visit summary."""
    out = {}
    for region in ("brain", "spine"):
        ranked = sorted((r, s) for s in summary.get("series", [])
                        if (r := _rank(s, region)) is not None)
        if ranked:
            out[region] = ranked[0][1]
    return out


def submit_early(client: Any, out: Path | str,
                 visits: dict[tuple[str, str], list[dict[str, Any]]]) -> list[Any]:
    """Submit the morphometry stage of each visit as soon as its series are
    converted and QC'd, with the choice :func:`run_morphometry` makes later
    (:func:`choose_series` over the visit's series entries: ``output``,
    ``status``, ``qc_verdict``, ``region``, ``contrast``, ``post_contrast``).

    Submitted after the comparisons, the tasks run when a worker would
    otherwise idle; :func:`run_morphometry` then finds them cached. Wait for
    the returned futures before calling it (a stage must not run twice at
    once). Errors are left to :func:`run_morphometry`, which re-runs and
    reports them."""
    work = Path(out) / "work"
    futs = []
    for series in visits.values():
        for region, s in choose_series({"series": series}).items():
            futs.append(client.submit(_run_morphometry, str(work),
                                      Path(out) / "bids" / s["output"], region,
                                      s["contrast"], pure=False))
    return futs


def run_morphometry(out: Path | str, client: Any = None) -> list[dict[str, Any]]:
    """Measure every visit of ``OUT/visits`` (on the Dask ``client`` when given,
    else in this process) and write ``OUT/morphometry.json``: one entry per
    (subject, visit, region) with the series, the stage manifest and the result,
    or the error. A failed measurement never stops the others."""
    out = Path(out)
    work = out / "work"
    jobs = []
    for p in sorted(out.glob("visits/sub-*/ses-*/visit_summary.json")):
        v = json.loads(p.read_text())
        for region, s in choose_series(v).items():
            jobs.append(({"subject": v["subject"], "visit": v["visit"], "region": region,
                          "series": s["output"], "contrast": s["contrast"]},
                         out / "bids" / s["output"]))
    entries: list[dict[str, Any]] = []
    if client is not None:
        from distributed import wait

        futs = [client.submit(_run_morphometry, str(work), img, e["region"], e["contrast"],
                              pure=False) for e, img in jobs]
        wait(futs)
        results: list[Any] = []
        for f in futs:
            try:
                results.append(f.result())
            except Exception as exc:  # one series fails alone
                results.append(exc)
    else:
        results = []
        for e, img in jobs:
            try:
                results.append(_run_morphometry(str(work), img, e["region"], e["contrast"]))
            except Exception as exc:
                results.append(exc)
    for (e, _), res in zip(jobs, results, strict=True):
        if isinstance(res, StageResult):
            doc = json.loads((res.path / "morphometry.json").read_text())
            entries.append({**e, "manifest": str((res.path / "manifest.json").relative_to(out)),
                            "result": doc})
        else:
            log.warning("morphometry %s failed: %s", e["series"], res)
            entries.append({**e, "error": f"{type(res).__name__}: {res}"})
    (out / "morphometry.json").write_text(json.dumps(entries, indent=2, sort_keys=True))
    return entries
