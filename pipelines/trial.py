"""The whole-trial Dask graph: DICOM tree -> per-visit candidate summaries.

Graph (one task per box; arrows are data dependencies)::

    plan (driver, headers only)
      -> convert[series]                      (one per series)
      -> qc[series]                           (unusable series are not compared)
      -> n4[series], masks[brain series that are a baseline]   (pipelines.preprocess)
      -> register[follow-up vs baseline counterpart]   rigid registration
         register[follow-up vs previous-visit counterpart]
      -> detect[pair]                         z-map + candidates (configs/detection.yaml),
                                              with the visits' ADC (dwi) / pre-contrast T1w (t1ce)
      -> evidence[pair]                       montages + registration check
         volume[brain T1w (else T2w) follow-up vs baseline]   Jacobian volume change
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
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from mri_safety import __version__
from mri_safety.change.candidates import location_words
from mri_safety.change.jacobian import VolumeChangeParams
from mri_safety.change.params import DetectParams, load_params
from mri_safety.config import Config, load_config
from mri_safety.dicom.deid import Deidentifier
from mri_safety.qc.config import load_qc_config
from mri_safety.threads import itk_threads as _itk  # stage parameters are named itk_threads
from mri_safety.visits import parse_date
from pipelines.cache import (
    StageResult,
    StageStore,
    canonical_json,
    file_digest,
    link_or_copy,
)
from pipelines.convert import (
    SeriesPlan,
    SeriesReport,
    convert_planned,
    plan_conversion,
)
from pipelines.multicontrast import (
    bvalue_class,
    drop_partnered_adc,
    load_within,
    run_volume,
    series_bvalues,
    volume_entry,
    volume_pairs,
    within_partners,
)
from pipelines.preprocess import run_masks, run_n4

log = logging.getLogger(__name__)

#: Dask retries of a stage task that raised (a stage is idempotent: a retry of
#: finished work is a cache hit). A worker that dies is handled by the scheduler,
#: which re-runs its tasks elsewhere.
RETRIES = 1

#: library code each stage calls: its source is part of the stage's cache key
#: (register does not depend on the detection-only modules, so editing
#: detection code re-runs detect, not registration)
CODE_DEPS: dict[str, tuple[str, ...]] = {
    "convert": ("mri_safety.dicom", "mri_safety.config", "pipelines.convert"),
    "qc": ("mri_safety.qc", "mri_safety.distance"),
    "register": ("mri_safety.change.compare", "mri_safety.change.masks",
                 "mri_safety.change.region", "mri_safety.register", "mri_safety.preprocess",
                 "mri_safety.distance"),
    "detect": ("mri_safety.change", "mri_safety.preprocess.spine",  # spine: cord, levels
               "mri_safety.preprocess.grid", "mri_safety.register.transforms",
               "mri_safety.distance"),
    "evidence": ("mri_safety.evidence", "mri_safety.change.candidates"),  # location words
}

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


def evidence_stage(
    inputs: dict[str, Path], out: Path, candidates: list[dict[str, Any]],
    compared: tuple[str, str],
) -> dict[str, Any]:
    """Montage PNG per flagged candidate and a registration check picture.
    ``compared``: (reference, follow-up) file names, for the row labels (the
    reference is the baseline or the previous visit). A ``new_fluid_space``
    candidate shows the fluid map (``inputs["zmap_fluid"]``, when the comparison
    wrote one), where the pooled z-map cancels (:mod:`mri_safety.change.fluid`)."""
    import nibabel as nib

    from mri_safety.evidence.montage import MontageCandidate, comparison_labels, render_montage
    from mri_safety.evidence.regcheck import render_regcheck

    base: Any = nib.load(inputs["baseline"])
    fu: Any = nib.load(inputs["followup_in_baseline"])
    z: Any = nib.load(inputs["zmap"])
    zf: Any = nib.load(inputs["zmap_fluid"]) if "zmap_fluid" in inputs else None
    render_regcheck(base, fu, out / "regcheck.png")
    rows, diff_label = comparison_labels(*compared)
    pictures = []
    for c in candidates:
        cand = MontageCandidate(
            id=str(c["id"]), type=str(c["type"]),
            centroid_ras_mm=tuple(float(v) for v in c["centroid_ras_mm"]),  # type: ignore[arg-type]
            volume_mm3=float(c["volume_mm3"]), location=location_words(c.get("location")),
            score=float(c["score"]))
        name = f"candidate-{c['id']}.png"
        fluid = c["type"] == "new_fluid_space" and zf is not None
        render_montage(base, fu, zf if fluid else z, cand, out / name, diff_limit=5.0,
                       diff_label=f"fluid {diff_label}" if fluid else diff_label,
                       row_labels=rows)
        pictures.append(name)
    return {"montages": pictures}


def register_stage(
    inputs: dict[str, Path], out: Path, registration_threads: int, seed: int,
    itk_threads: int = 1, region: str = "brain", contrast: str | None = None, *,
    baseline_n4: Path, followup_n4: Path, masks: Path | None,
) -> dict[str, Any]:
    """Registration of the follow-up to the baseline (rigid; for ``region`` spine the
    canal-focused rigid + B-spline, ``contrast`` choosing the cord template:
    :func:`mri_safety.change.compare.register_pair`), from the series'
    cached ``n4`` stages (``baseline_n4``, ``followup_n4``) and the baseline's
    ``masks`` stage (:mod:`pipelines.preprocess`; None for spine pairs, whose
    masks are the baseline canal found by the registration); writes

    * ``baseline_n4.nii.gz``, ``followup_n4.nii.gz`` (float32, each on its raw
      image's grid), ``brain_mask.nii.gz``, ``icv_mask.nii.gz`` (uint8, baseline
      grid): links to (or copies of) the preprocessing outputs, so the folder
      holds the whole registered pair (:func:`load_registered`),
    * ``transform.tfm`` (ITK text, baseline -> follow-up points, LPS mm; full
      double precision), ``followup_in_baseline.nii.gz`` (raw follow-up, linear),
    * ``registration.json`` (method, metric, mask method, parameters).

    Only the registration parameters (and ``itk_threads``, the ITK global
    thread count) are parameters here; the detection configuration is not, so
    changing it reuses this stage.
    """
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.change.compare import _load, register_pair
    from mri_safety.change.masks import img_like
    from pipelines.preprocess import load_masks, load_n4

    base, fu = _load(inputs["baseline"]), _load(inputs["followup"])
    with _itk(itk_threads):
        rp = register_pair(base, fu, threads=registration_threads, seed=seed,
                           baseline_n4=load_n4(baseline_n4, base),
                           followup_n4=load_n4(followup_n4, fu),
                           masks=None if masks is None else load_masks(masks, base),
                           region=region, contrast=contrast)
    link_or_copy(baseline_n4 / "n4.nii.gz", out / "baseline_n4.nii.gz")
    link_or_copy(followup_n4 / "n4.nii.gz", out / "followup_n4.nii.gz")
    for name, m in (("brain_mask", rp.brain), ("icv_mask", rp.icv)):
        if masks is not None:
            link_or_copy(masks / f"{name}.nii.gz", out / f"{name}.nii.gz")
        else:
            sitk.WriteImage(img_like(m.astype(np.uint8), rp.baseline), str(out / f"{name}.nii.gz"),
                            useCompression=True)
    sitk.WriteTransform(rp.transform, str(out / "transform.tfm"))
    sitk.WriteImage(rp.followup_in_baseline(), str(out / "followup_in_baseline.nii.gz"),
                    useCompression=True)
    to_mni = None if rp.subject_to_mni is None else rp.subject_to_mni.tolist()
    doc = {"registration": {k: v for k, v in rp.registration.items() if k != "seconds"},
           "mask_method": rp.mask_method, "subject_to_mni_ras": to_mni, "region": region,
           "parameters": {"registration_threads": registration_threads, "seed": seed}}
    (out / "registration.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return dict(rp.registration)


def load_registered(reg_dir: Path, baseline: Path, followup: Path) -> Any:
    """The :class:`~mri_safety.change.compare.RegisteredPair` written by
    :func:`register_stage` into ``reg_dir``. Geometry comes from the raw
    images (read exactly as the register stage read them), voxel values and
    the transform from the files, so the pair equals the in-memory one."""
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.change.compare import RegisteredPair, _load
    from mri_safety.change.masks import arr

    base, fu = _load(baseline), _load(followup)

    def image(name: str, like: sitk.Image, pixel: int) -> sitk.Image:
        img = sitk.ReadImage(str(reg_dir / name), pixel)
        img.CopyInformation(like)
        return img

    doc = json.loads((reg_dir / "registration.json").read_text())
    summary = json.loads((reg_dir / "manifest.json").read_text())["summary"]
    return RegisteredPair(
        baseline=base, followup=fu,
        baseline_n4=image("baseline_n4.nii.gz", base, sitk.sitkFloat32),
        followup_n4=image("followup_n4.nii.gz", fu, sitk.sitkFloat32),
        brain=arr(image("brain_mask.nii.gz", base, sitk.sitkUInt8)) > 0,
        icv=arr(image("icv_mask.nii.gz", base, sitk.sitkUInt8)) > 0,
        mask_method=doc["mask_method"],
        transform=sitk.ReadTransform(str(reg_dir / "transform.tfm")),
        subject_to_mni=(None if doc.get("subject_to_mni_ras") is None
                        else np.asarray(doc["subject_to_mni_ras"], np.float64)),
        registration={**doc["registration"], "seconds": summary.get("seconds", 0.0)})


def detect_stage(
    inputs: dict[str, Path], out: Path, region: str, contrast: str,
    detection: dict[str, Any], registered: Path, itk_threads: int = 1,
    extra_contrasts: list[str] | None = None, extra_registered: list[Path] | None = None,
    zmemo: dict[tuple[str, str], Any] | None = None, zshared: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """z-map and candidates of one registered pair (the outputs of
    ``mri-safety compare``, docs/detection.md, byte-identical to it for the
    same inputs and parameters). ``detection``: the detection parameters
    without the registration ones (those come from the register stage's
    ``registration.json``, which is keyed by its digest). ``extra_contrasts``:
    the comparisons of those contrasts of the same visits (``inputs["extraK_baseline"]``,
    ``inputs["extraK_followup"]``, registered in ``extra_registered[K]``) are extra
    contrasts of this one, as ``mri-safety compare --extra-contrast`` takes them:
    pooled into the z-map (FLAIR with T2w) or adding agreement (docs/detection.md).

    ``zmemo``: z-maps of brain comparisons by (register stage folder, parameters),
    shared by the detections of a group run in one task (:func:`_run_detect_group`):
    each pair's z-map is computed once for all of them, with the same result;
    ``zshared``: the register folders whose z-maps another detection of the group
    uses (only those are kept in ``zmemo``). Neither is part of the stage key."""
    from mri_safety.change.compare import _digest, detect_registered, write_outputs, z_registered
    from mri_safety.change.params import DetectParams

    rp = load_registered(registered, inputs["baseline"], inputs["followup"])
    reg_params = json.loads((registered / "registration.json").read_text())["parameters"]
    p = DetectParams.model_validate({**detection, **reg_params})
    within = load_within(inputs)  # ADC / pre-contrast T1w of the two visits, if any
    pools, extra_doc = [], []
    regs = extra_registered or []
    if len(regs) != len(extra_contrasts or []):
        raise ValueError("extra_registered needs one register folder per extra contrast")
    for k, (ec, reg_dir) in enumerate(zip(extra_contrasts or [], regs, strict=True)):
        pb, pf = inputs[f"extra{k}_baseline"], inputs[f"extra{k}_followup"]
        pools.append((load_registered(reg_dir, pb, pf), ec))
        extra_doc.append({"baseline": pb.name, "baseline_sha256": _digest(pb),
                          "followup": pf.name, "followup_sha256": _digest(pf),
                          "contrast": ec})
    memo = zmemo if zmemo is not None and region == "brain" else None

    def z_of(reg_dir: Path, pair: Any) -> Any:
        if memo is None or reg_dir.name not in zshared:
            return None  # detect_registered computes it
        key = (reg_dir.name, p.model_dump_json())
        if key not in memo:
            memo[key] = z_registered(pair, p)
        return memo[key]

    with _itk(itk_threads):
        own_z = z_of(registered, rp)
        pool_z = [z_of(reg_dir, pr) for reg_dir, (pr, _) in zip(regs, pools, strict=True)]
        res = detect_registered(rp, contrast=contrast, region=region, params=p, within=within,
                                extra_registered=pools, own_z=own_z,
                                extra_zpairs=pool_z)
    b, f = inputs["baseline"], inputs["followup"]
    doc_inputs: dict[str, Any] = {"baseline": b.name, "baseline_sha256": _digest(b),
                                  "followup": f.name, "followup_sha256": _digest(f),
                                  "extra": extra_doc}
    if within is not None:
        doc_inputs["within_visit"] = {k: inputs[k].name for k in sorted(inputs)
                                      if k not in ("baseline", "followup")
                                      and not k.startswith("extra")}
    doc = write_outputs(res, out, doc_inputs, native=(inputs["baseline"], inputs["followup"]))
    return {
        "n_candidates": len(doc["candidates"]),
        "n_flagged": sum(1 for c in doc["candidates"] if c.get("flagged")),
        "registration_status": doc.get("registration", {}).get("status"),
    }


def _run_convert(root: str, plan: SeriesPlan, deid: Deidentifier, key: dict[str, str]
                 ) -> StageResult:
    return StageStore(root).run("convert", convert_series_stage, {}, {},
                                extra_key=key, context={"plan": plan, "deid": deid},
                                code_deps=CODE_DEPS["convert"])


def _run_qc(root: str, image: Path, sidecar: Path, qc: dict[str, Any]) -> StageResult:
    return StageStore(root).run("qc", qc_stage, {"image": image, "sidecar": sidecar},
                                {"qc": qc}, code_deps=CODE_DEPS["qc"])


def _run_register(root: str, baseline: Path, followup: Path, reg_params: dict[str, Any],
                  baseline_n4: StageResult, followup_n4: StageResult,
                  masks: StageResult | None) -> StageResult:
    """``reg_params``: registration_threads, seed, itk_threads (and region, contrast
    for spine pairs); the other arguments are the series' preprocessing stages
    (:mod:`pipelines.preprocess`; no ``masks`` for spine pairs)."""
    return StageStore(root).run(
        "register", register_stage, {"baseline": baseline, "followup": followup}, reg_params,
        extra_key={"baseline_n4": baseline_n4.digest, "followup_n4": followup_n4.digest,
                   **({} if masks is None else {"masks": masks.digest})},
        context={"baseline_n4": baseline_n4.path, "followup_n4": followup_n4.path,
                 "masks": None if masks is None else masks.path},
        code_deps=CODE_DEPS["register"])


def _run_detect(root: str, reg: StageResult, baseline: Path, followup: Path, region: str,
                contrast: str, detection: dict[str, Any], threads: int,
                partners: dict[str, Path] | None = None,
                extras: list[tuple[StageResult, Path, Path, str]] | None = None,
                zmemo: dict[tuple[str, str], Any] | None = None,
                zshared: frozenset[str] = frozenset()) -> StageResult:
    """``partners``: within-visit partner files by role (hashed as inputs).
    ``extras``: per extra comparison of the same visits (:func:`extra_partners`),
    its register result, baseline, follow-up and contrast. ``zmemo``, ``zshared``:
    see :func:`detect_stage`."""
    inputs = {"baseline": baseline, "followup": followup, **(partners or {})}
    params: dict[str, Any] = {"region": region, "contrast": contrast,
                              "detection": detection, "itk_threads": threads}
    key = {"register": reg.digest}
    context: dict[str, Any] = {"registered": reg.path, "zmemo": zmemo, "zshared": zshared}
    if extras:
        for k, (_reg, eb, ef, _c) in enumerate(extras):
            inputs.update({f"extra{k}_baseline": eb, f"extra{k}_followup": ef})
        params["extra_contrasts"] = [e[3] for e in extras]
        key["extra_register"] = ",".join(e[0].digest for e in extras)
        context["extra_registered"] = [e[0].path for e in extras]
    return StageStore(root).run("detect", detect_stage, inputs, params,
                                extra_key=key, context=context,
                                code_deps=CODE_DEPS["detect"])


def _run_detect_group(root: str, *kws: dict[str, Any]) -> list[StageResult | BaseException]:
    """The detect stages of comparisons that are each other's extra contrasts
    (:func:`detect_groups`: FLAIR and T2w pooled, T1w taking both), one after the
    other in one task so that each pair's z-map is computed once for all of them
    (``zmemo``). ``kws``: keyword arguments of :func:`_run_detect`, in running
    order. Each entry of the result is that stage's result or its exception (one
    failing never fails the others; unlike a lone detect task, a stage that raised
    is not retried by Dask: stages are deterministic, and a worker that dies is
    still handled by the scheduler, which re-runs the whole task)."""
    memo: dict[tuple[str, str], Any] = {}
    shared = frozenset(e[0].path.name for kw in kws for e in kw.get("extras") or [])
    out: list[StageResult | BaseException] = []
    for kw in kws:
        try:
            out.append(_run_detect(root, **kw, zmemo=memo, zshared=shared))
        except Exception as exc:
            out.append(exc)
    return out


def _pick(results: list[StageResult | BaseException], k: int) -> StageResult:
    """Entry ``k`` of :func:`_run_detect_group`'s result (its exception re-raised)."""
    r = results[k]
    if isinstance(r, BaseException):
        raise r
    return r


def split_detection(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``DetectParams`` -> (registration parameters, detection-only parameters):
    the register stage is keyed by the first only, detect by the second."""
    from mri_safety.change.compare import REGISTER_PARAMS

    d = params.model_dump(mode="json")
    return ({k: d[k] for k in REGISTER_PARAMS},
            {k: v for k, v in d.items() if k not in REGISTER_PARAMS})


def _run_evidence(root: str, compare: StageResult, baseline: Path) -> StageResult:
    """Montages of the flagged candidates of one ``detect`` result."""
    doc = json.loads((compare.path / "candidates.json").read_text())
    flagged = [c for c in doc["candidates"] if c.get("flagged")]
    fluid = compare.path / "zmap_fluid.nii.gz"  # T2w pooled with FLAIR only
    return StageStore(root).run(
        "evidence", evidence_stage,
        {"baseline": baseline,
         "followup_in_baseline": compare.path / "followup_in_baseline.nii.gz",
         "zmap": compare.path / "zmap.nii.gz",
         **({"zmap_fluid": fluid} if fluid.exists() else {})},
        {"candidates": flagged,
         "compared": [doc["inputs"]["baseline"], doc["inputs"]["followup"]]},
        code_deps=CODE_DEPS["evidence"])


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
    #: within-visit partner series by role (adc_/pre_ + baseline/followup), see
    #: pipelines.multicontrast.within_partners
    within: dict[str, str] = field(default_factory=dict)


def _study_day(row: SeriesReport, plans: dict[str, SeriesPlan]) -> date:
    """The series' StudyDate (``date.max`` when absent or invalid)."""
    try:
        return parse_date(plans[row.key].group.study_date)
    except ValueError:
        return date.max


def _rows_by_subject(rows: list[SeriesReport]) -> dict[str, list[SeriesReport]]:
    """Series reports of each subject (reports without a subject left out)."""
    out: dict[str, list[SeriesReport]] = defaultdict(list)
    for r in rows:
        if r.subject:
            out[r.subject].append(r)
    return out


def _visit_order(srows: list[SeriesReport], plans: dict[str, SeriesPlan]
                 ) -> tuple[list[str], str]:
    """One subject's visits in time order and the one its follow-ups are compared
    with: ``baseline`` when there is one, else the first.

    Time order is StudyDate order (the earliest study of a visit; a visit without
    a valid date last), so it holds without an enrolment row, when visits carry
    time-point labels but no days from dosing; ties go by visit label."""
    first: dict[str, date] = {}
    for r in srows:
        d = _study_day(r, plans)
        first[r.session] = min(d, first.get(r.session, date.max))
    order = sorted(first, key=lambda v: (first[v], v))
    return order, "baseline" if "baseline" in order else order[0]


def pairs_for(rows: list[SeriesReport], plans: dict[str, SeriesPlan],
              bvalues: dict[str, float | None] | None = None) -> list[Pair]:
    """Comparisons to run: each converted follow-up series against the
    matching series (same region, contrast, contrast agent) of the baseline
    visit and, when different, of the previous visit. Post-contrast T1w is
    compared as ``t1ce``. DWI series match by b-value class (``bvalues``:
    output name -> largest b, :func:`pipelines.multicontrast.series_bvalues`);
    b0 references are not compared."""
    bv = bvalues or {}

    def bclass(r: SeriesReport) -> str:
        return bvalue_class(bv.get(r.output)) if r.contrast == "DWI" else ""

    by_subject: dict[str, list[SeriesReport]] = defaultdict(list)
    for r in rows:
        if r.status == "converted" and r.contrast in COMPARE_CONTRAST and bclass(r) != "b0":
            by_subject[r.subject].append(r)
    out: list[Pair] = []
    for subject, srows in by_subject.items():
        order, base = _visit_order(srows, plans)

        def match(visit: str, like: SeriesReport,
                  srows: list[SeriesReport] = srows) -> SeriesReport | None:
            cands = [r for r in srows if r.session == visit and r.region == like.region
                     and r.contrast == like.contrast and r.post_contrast == like.post_contrast
                     and bclass(r) == bclass(like)]
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
                contrast = ("t1ce" if r.contrast == "T1w" and r.post_contrast
                            else COMPARE_CONTRAST[r.contrast])
                out.append(Pair(subject, r.session, ref_visit, kind,
                                COMPARE_REGION.get(r.region, "brain"),
                                contrast, ref.output, r.output))
    return out


def not_compared(rows: list[SeriesReport], pairs: list[Pair], plans: dict[str, SeriesPlan],
                 qc: dict[str, dict[str, Any]], bvalues: dict[str, float | None] | None = None
                 ) -> dict[tuple[str, str], list[dict[str, str]]]:
    """(subject, visit) -> the follow-up series of a comparable contrast that have no
    comparison with the baseline visit, each with the reason (its baseline
    counterpart is missing, failed to convert or is unusable by QC). Without this a
    visit read "no candidates flagged" although, say, its FLAIR was never compared.
    ``rows``: every series report; ``qc``: output name -> QC document. ADC series
    (judged inside their DWI comparison) and b0 DWI references are not listed."""
    bv = bvalues or {}
    compared = {p.followup_name for p in pairs if p.kind == "baseline"}
    out: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for subject, srows in _rows_by_subject(rows).items():
        _, base = _visit_order(srows, plans)
        for r in srows:
            if (r.session == base or r.status != "converted" or r.output in compared
                    or r.contrast not in COMPARE_CONTRAST or r.contrast == "ADC"
                    or qc.get(r.output, {}).get("verdict") == "unusable"
                    or (r.contrast == "DWI" and bvalue_class(bv.get(r.output)) == "b0")):
                continue
            refs = [b for b in srows if b.session == base and b.region == r.region
                    and b.contrast == r.contrast and b.post_contrast == r.post_contrast]
            what = f"{r.region} {r.contrast}{' post-contrast' if r.post_contrast else ''}"
            if not refs:
                why = f"no {what} series at the {base} visit"
            elif all(b.status != "converted" for b in refs):
                why = f"the {base} {what} did not convert ({'; '.join(refs[0].errors)})"
            else:
                q = qc.get(next(b.output for b in refs if b.status == "converted"), {})
                why = (f"the {base} {what} is unusable by QC "
                       f"({'; '.join(q.get('verdict_reasons', []))})")
            out[(subject, r.session)].append({"series": r.output, "reason": why})
    return dict(out)


def _partners_by_table(pairs: list[Pair], table: dict[str, tuple[str, ...]],
                       regions: tuple[str, ...] | None = None) -> dict[int, list[int]]:
    """Index of each comparison -> indices of the comparisons of the same subject,
    visits and region whose contrasts ``table`` lists for its contrast (in the
    table's order; only comparisons in ``regions``, default any; empty lists left out)."""
    by_key = {(p.subject, p.visit, p.reference_visit, p.region, p.contrast): j
              for j, p in enumerate(pairs)}
    out = {}
    for i, p in enumerate(pairs):
        if regions is not None and p.region not in regions:
            continue
        js = [by_key.get((p.subject, p.visit, p.reference_visit, p.region, other))
              for other in table.get(p.contrast, ())]
        if found := [j for j in js if j is not None]:
            out[i] = found
    return out


def pool_partners(pairs: list[Pair]) -> dict[int, int]:
    """Index of each FLAIR comparison -> index of the T2w comparison of the same
    subject, visits and region, and the reverse: a new lesion is bright on both,
    so each detection pools the other's z-map into its own
    (:data:`mri_safety.change.compare.POOLED`, :func:`mri_safety.change.zmap.combine_z`;
    docs/detection.md), computed from the other's register stage."""
    from mri_safety.change.compare import POOLED

    return {i: js[0] for i, js in _partners_by_table(pairs, POOLED).items()}


#: brain comparisons that take comparisons of other contrasts of the same visits as extra
#: contrasts besides the FLAIR/T2w pool (:func:`pool_partners`): T1w takes FLAIR and T2w, for
#: agreement (a new lesion is T1-dark and T2-bright) and for the ventricle rule's CSF
#: contradiction (a T1-dark mass beside grown ventricles is bright on FLAIR, CSF is not)
EXTRA_PARTNERS: dict[str, tuple[str, ...]] = {"t1w": ("flair", "t2w")}


def extra_partners(pairs: list[Pair]) -> dict[int, list[int]]:
    """Index of each comparison -> indices of the comparisons of the same subject,
    visits and region that are its extra contrasts: the FLAIR/T2w pool
    (:func:`pool_partners`) and :data:`EXTRA_PARTNERS` (brain only). A detect stage
    loads their register stages and computes their z-maps (docs/pipeline.md)."""
    return {**{i: [j] for i, j in pool_partners(pairs).items()},
            **_partners_by_table(pairs, EXTRA_PARTNERS, ("brain",))}


def detect_groups(extras: dict[int, list[int]], n: int) -> list[list[int]]:
    """The comparisons ``0..n-1`` in groups whose detect stages run in one task
    (:func:`_run_detect_group`): those linked through ``extras``
    (:func:`extra_partners`), each group in running order: fewest extra
    contrasts first, then by index. Any order gives the same outputs (a shared
    z-map is computed by whichever detection needs it first); this one only
    keeps the memo small while the others run (a T1w comparison's own z-map is
    never kept, and it runs last).

    >>> detect_groups({0: [1], 1: [0], 2: [0, 1], 4: [3]}, 6)
    [[0, 1, 2], [3, 4], [5]]
    """
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, js in extras.items():
        for j in js:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((sorted(g, key=lambda i: (len(extras.get(i, [])), i)) for g in groups.values()),
                  key=min)


def without_failed(extras: dict[int, list[int]], registered: set[int]
                   ) -> dict[int, list[int]]:
    """The detections to run again, each with the extra comparisons left to it:
    those registered (``registered``: indices whose register stage succeeded)
    whose extras (:func:`extra_partners`) are not all registered.

    >>> without_failed({0: [1], 1: [0], 2: [0, 1], 3: [4]}, {0, 2, 3, 4})
    {0: [], 2: [0]}
    """
    return {i: [j for j in js if j in registered] for i, js in extras.items()
            if i in registered and not set(js) <= registered}


def _series_by_visit(rows: list[SeriesReport], qc: dict[str, dict[str, Any]]
                     ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The series entries of each visit as the visit summary will list them
    (:func:`pipelines.morphometry.choose_series` reads them)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.subject:
            out[(r.subject, r.session)].append(_series_entry(r, qc.get(r.output, {})))
    return out


def _series_entry(r: SeriesReport, q: dict[str, Any]) -> dict[str, Any]:
    """One series of a visit summary (``q``: its QC document, or empty)."""
    return {"output": r.output, "source": r.source, "status": r.status,
            "qc_verdict": q.get("verdict"), "qc_reasons": q.get("verdict_reasons", []),
            "qc_manifest": q.get("manifest"), "region": r.region, "contrast": r.contrast,
            "post_contrast": r.post_contrast, "errors": r.errors}


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
    link_or_copy(src_root / rel, dest_root / rel)


def run_trial(
    dicom_dir: Path | str,
    out: Path | str,
    client: Any,
    *,
    secret: bytes,
    enrolment: Path | str | None = None,
    config: Config | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    detection: DetectParams | None = None,
    threads_per_task: int = 1,
) -> TrialSummary:
    """Run the trial graph on a Dask ``client`` and write ``out``:

    * ``out/bids/`` the de-identified BIDS tree (links to stage outputs),
    * ``out/work/<stage>/<digest>/`` stage outputs with ``manifest.json``,
    * ``out/visits/sub-*/ses-*/visit_summary.json`` candidates per visit,
      each linked to the manifest that produced it,
    * ``out/conversion_report.{json,tsv}`` and ``out/run_summary.json``.

    ``progress(stage, done, total)`` is called as tasks finish. ``detection``:
    detection parameters (default ``configs/detection.yaml``); its registration
    fields key the register stage, the others only detect (and what follows).
    ``threads_per_task``: ITK global thread count inside the stages and the
    registration threads (overriding ``registration_threads`` of ``detection``;
    a cache-key parameter: results differ slightly with it); match it to the
    cluster's threads per worker (``cores / workers``).
    """
    from distributed import as_completed, wait

    from pipelines.morphometry import submit_early

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

    # register -> detect -> evidence per pair (follow-up vs baseline / previous
    # visit), chained on the cluster so a pair's detection starts as soon as its
    # registration is done
    reg_params, det_params = split_detection(
        detection if detection is not None else load_params())
    # workers x threads = cores: registration gets the task's threads too (the
    # configured registration_threads on every worker oversubscribed the cores)
    reg_params["itk_threads"] = reg_params["registration_threads"] = threads_per_task
    bvals = series_bvalues(usable, {n: r.path for n, r in by_name.items()})
    pairs = pairs_for(usable, plans, bvals)
    missing = not_compared(rows, pairs, plans, qc, bvals)
    for pair in pairs:  # ADC (dwi) / pre-contrast T1w (t1ce) of the two visits
        pair.within = within_partners(pair, usable)
    pairs = drop_partnered_adc(pairs)  # ADC judged inside the DWI comparison
    vol_pairs = volume_pairs(pairs)  # brain T1w (else T2w) follow-up vs baseline
    vol_params = asdict(VolumeChangeParams())
    extras = extra_partners(pairs)  # FLAIR <-> T2w pooled, T1w -> FLAIR, T2w (extra contrasts)
    chain: dict[Any, tuple[str, Any]] = {}  # future -> (stage, pair index or series name)
    regs: dict[int, Any] = {}
    dets: dict[int, Any] = {}

    def paths(pair: Pair) -> tuple[Path, Path]:
        return (by_name[pair.baseline_name].path / pair.baseline_name,
                by_name[pair.followup_name].path / pair.followup_name)

    def detect_kw(i: int, extra_js: list[int]) -> dict[str, Any]:
        pair = pairs[i]
        b, f = paths(pair)
        return {"reg": regs[i], "baseline": b, "followup": f, "region": pair.region,
                "contrast": pair.contrast, "detection": det_params, "threads": threads_per_task,
                "partners": {role: by_name[name].path / name
                             for role, name in pair.within.items()},
                "extras": [(regs[j], *paths(pairs[j]), pairs[j].contrast) for j in extra_js]}

    def chain_evidence(i: int) -> None:
        ef = client.submit(_run_evidence, str(work), dets[i], paths(pairs[i])[0], pure=False,
                           retries=RETRIES)
        chain.update({dets[i]: ("detect", i), ef: ("evidence", i)})

    def submit_detect(i: int, extra_js: list[int]) -> None:
        kw = detect_kw(i, extra_js)
        dets[i] = client.submit(_run_detect, str(work), **kw, pure=False, retries=RETRIES)
        chain_evidence(i)

    def submit_detect_group(group: list[int]) -> None:
        task = client.submit(_run_detect_group, str(work),
                             *(detect_kw(i, extras.get(i, [])) for i in group),
                             pure=False, retries=RETRIES)
        for k, n in enumerate(group):
            dets[n] = client.submit(_pick, task, k, pure=False)
            chain_evidence(n)

    # per series: N4 once, brain masks once if it is the baseline of a comparison
    n4s: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    for pair in pairs:
        for name in (pair.baseline_name, pair.followup_name):
            if name not in n4s:
                n4s[name] = client.submit(run_n4, str(work), by_name[name].path / name,
                                          threads_per_task, pure=False, retries=RETRIES)
                chain[n4s[name]] = ("n4", name)
        # brain masks (MNI template fit) for brain baselines only: a spine pair's
        # region is the canal its registration finds
        if pair.region == "brain" and pair.baseline_name not in masks:
            name = pair.baseline_name
            masks[name] = client.submit(run_masks, str(work), n4s[name],
                                        by_name[name].path / name, threads_per_task,
                                        pure=False, retries=RETRIES)
            chain[masks[name]] = ("masks", name)
    for i, pair in enumerate(pairs):
        b, f = paths(pair)
        # spine pairs: the canal-focused registration, which needs the contrast (brain
        # pairs keep the parameters, and so the cache keys, they always had)
        rp_i = (reg_params if pair.region == "brain"
                else {**reg_params, "region": pair.region, "contrast": pair.contrast})
        regs[i] = client.submit(_run_register, str(work), b, f, rp_i,
                                n4s[pair.baseline_name], n4s[pair.followup_name],
                                masks.get(pair.baseline_name), pure=False, retries=RETRIES)
        chain[regs[i]] = ("register", i)
        if i in vol_pairs:
            vf = client.submit(run_volume, str(work), regs[i], b, f, pair.contrast, vol_params,
                               threads_per_task, pure=False, retries=RETRIES)
            chain[vf] = ("volume", i)
    for group in detect_groups(extras, len(pairs)):  # sharing z-maps: one task each
        if len(group) > 1:
            submit_detect_group(group)
        else:
            submit_detect(group[0], extras.get(group[0], []))
    # morphometry fills idle workers while the comparisons finish (cached for the reports)
    early = submit_early(client, out, _series_by_visit(rows, qc))
    got: dict[tuple[str, Any], StageResult | BaseException] = {}
    finished: dict[str, int] = defaultdict(int)
    totals = {"n4": len(n4s), "masks": len(masks), "volume": len(vol_pairs)}

    def collect() -> None:
        for fut in as_completed(list(chain)):
            stage, i = chain.pop(fut)
            try:
                sres: StageResult = fut.result()
                got[(stage, i)] = sres
                count(stage, sres)
            except Exception as exc:  # a failed stage fails its pair only
                got[(stage, i)] = exc
            finished[stage] += 1
            if progress:
                total = totals.get(stage, len(pairs))
                progress(stage, min(finished[stage], total), total)

    collect()
    # a detection one of whose extra comparisons failed to register runs without it
    redo = without_failed(extras, {i for i in range(len(pairs))
                                   if not isinstance(got[("register", i)], BaseException)})
    for i, ok_js in redo.items():
        log.warning("%s: extra contrast comparison failed, compared without it",
                    pairs[i].followup_name)
        finished["detect"] -= 1
        finished["evidence"] -= 1
        submit_detect(i, ok_js)
    collect()
    wait(early)
    compared: list[tuple[Pair, StageResult | None, str]] = []
    evidence: dict[tuple[str, str], str] = {}
    registered: dict[tuple[str, str], str] = {}
    for i, pair in enumerate(pairs):
        reg, det, evi = got[("register", i)], got[("detect", i)], got[("evidence", i)]
        where = f"{pair.followup_name} vs {pair.baseline_name}"
        if isinstance(reg, BaseException):
            msg = f"register {where}: {reg}"
        elif isinstance(det, BaseException):
            msg = f"detect {where}: {det}"
        else:
            msg = ""
        if isinstance(reg, StageResult):
            registered[(pair.followup_name, pair.baseline_name)] = str(
                (reg.path / "manifest.json").relative_to(out))
        if msg:
            summary.failures.append(msg)
            compared.append((pair, None, msg))
            continue
        assert isinstance(det, StageResult)
        compared.append((pair, det, ""))
        if isinstance(evi, BaseException):
            summary.failures.append(f"evidence {pair.followup_name}: {evi}")
        else:
            evidence[(pair.followup_name, pair.baseline_name)] = str(evi.path.relative_to(out))

    volumes: list[tuple[Pair, StageResult | BaseException]] = []
    for i, pair in vol_pairs.items():
        vres = got[("volume", i)]
        if isinstance(vres, BaseException) and isinstance(got[("register", i)], StageResult):
            summary.failures.append(f"volume {pair.followup_name} vs {pair.baseline_name}: "
                                    f"{vres}")
        volumes.append((pair, vres))
    sidecars = {name: json.loads((res.path / name.replace(".nii.gz", ".json")).read_text())
                for name, res in by_name.items()}
    _write_visit_summaries(out, rows, plans, compared, summary, qc, evidence, sidecars,
                           registered, volumes, missing)
    summary.failures.extend(
        f"{r.source}: {'; '.join(r.errors)}" for r in report.series if r.status == "failed")
    summary.failures.extend(report.visit_errors)
    # files that may hold data but could not be read (unreadable header, no UIDs):
    # the conversion report lists them, the run names them as failures too
    summary.failures.extend(f"{p.path}: {p.message}" for p in report.file_problems
                            if p.level == "error")
    if not report.series:
        n_other = sum(1 for p in report.file_problems if p.level != "info")
        summary.failures.append(f"{dicom_dir}: no DICOM series found ({n_other} other "
                                "file(s) skipped; see conversion_report.tsv)")
    (out / "run_summary.json").write_text(json.dumps({
        "software": f"mri-safety {__version__}",
        "visits": summary.visits,
        "failures": summary.failures,
        "computed": summary.computed,
        "reused": summary.reused,
    }, indent=2, sort_keys=True))
    from pipelines.report import finish_reports  # morphometry + OUT/reports/ (docs/report.md)
    finish_reports(out, client, summary.failures)
    # a worker killed mid-stage leaves a private .tmp-* folder (never trusted;
    # its task was re-run elsewhere); all of this run's tasks are done now
    store.clean_partial()
    return summary


def _track_findings(visits: dict[tuple[str, str], dict[str, Any]], out: Path) -> None:
    """Stable finding IDs across visits (:mod:`mri_safety.change.tracking`).

    The "vs baseline" comparisons of one subject and baseline series share the
    baseline grid; their candidate label maps are linked visit by visit (in
    time order, ``visit_index``). Each of their candidates gets ``finding_id``;
    each visit summary gets ``findings``: the tracked findings seen at that
    visit, with their volume by visit. Candidates of "vs previous"
    comparisons live on the previous visit's grid and are not linked.
    """
    import nibabel as nib
    import numpy as np

    from mri_safety.change.tracking import VisitCandidates, track_findings

    groups: dict[tuple[str, str], list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for (subject, visit), v in visits.items():
        for c in v["comparisons"]:
            if c.get("kind") == "baseline" and c.get("candidates") is not None:
                groups[(subject, c["baseline_name"])].append((v["visit_index"], visit, c))
    for (subject, base_name), items in sorted(groups.items()):
        items.sort(key=lambda t: (t[0], t[1], t[2]["followup_name"]))
        chosen: dict[str, dict[str, Any]] = {}
        for _, visit, c in items:  # one follow-up series per visit
            chosen.setdefault(visit, c)
        seq = []
        for visit, c in chosen.items():
            labels = (out / c["manifest"]).parent / "candidates.nii.gz"
            lab = None
            if labels.is_file():
                lab = np.asarray(nib.load(str(labels)).dataobj)  # type: ignore[attr-defined]
            seq.append(VisitCandidates(visit, c["candidates"], lab))
        first = chosen[next(iter(chosen))]
        found = track_findings(seq, prefix=f"{first['region']}-{first['contrast']}-")
        by_key = {(s.visit, s.candidate_id): f.finding_id for f in found for s in f.sightings}
        for visit, c in chosen.items():
            for cand in c["candidates"]:
                fid = by_key.get((visit, int(cand["id"])))
                if fid is not None:
                    cand["finding_id"] = fid
            visits[(subject, visit)].setdefault("findings", []).extend(
                {**f.as_dict(), "baseline_series": base_name} for f in found
                if any(s.visit == visit for s in f.sightings))


def _read_transform(tfm: Path) -> Any:
    """The register stage's ``transform.tfm`` (SimpleITK, reference -> follow-up
    points, LPS mm), or None when it is missing."""
    import SimpleITK as sitk

    return sitk.ReadTransform(str(tfm)) if tfm.is_file() else None


def _previous_to_baseline(to_fu: Any, prev_to_fu: Any, points_ras: Any) -> Any:
    """4 x 4 RAS+ matrix from the previous visit's world to the baseline's, through
    this follow-up: ``inverse(to_fu) o prev_to_fu`` (the two register stages'
    transforms, reference -> follow-up points). Exact when both are affine;
    otherwise (the spine's rigid + B-spline) the affine fitted to that map at
    ``points_ras`` (N x 3, previous visit's world RAS+ mm: the candidates to
    group, each with points 5 mm around its centre so that the fit is
    well-posed), which is exact to the fit's residual where it is used. None
    when the map cannot be inverted there."""
    import numpy as np

    from mri_safety.register.transforms import (
        fit_affine_ras,
        invert_points_ras,
        map_points_ras,
        sitk_to_ras_matrix,
    )

    if to_fu.IsLinear() and prev_to_fu.IsLinear():
        return np.linalg.inv(sitk_to_ras_matrix(to_fu)) @ sitk_to_ras_matrix(prev_to_fu)
    if len(points_ras) < 4:
        return None
    at_base = invert_points_ras(to_fu, map_points_ras(prev_to_fu, points_ras))
    return None if at_base is None else fit_affine_ras(points_ras, at_base)


def _fit_points(cands: list[dict[str, Any]], labels: Any, affine: Any) -> Any:
    """Where a "vs previous" comparison's map to the baseline world is fitted
    (:func:`_previous_to_baseline`): its flagged candidates' voxel centres (at
    most 200 per candidate, evenly taken) and, around each centroid, points
    5 mm along each axis (world RAS+ mm of the previous visit)."""
    import numpy as np

    from mri_safety.change.candidates import voxel_to_ras

    pts = []
    for x in cands:
        if not x.get("flagged"):
            continue
        c = np.asarray(x["centroid_ras_mm"], np.float64)
        pts.append(c + 5.0 * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)]))
        if labels is not None and affine is not None:
            ijk = np.argwhere(labels == int(x["id"])).astype(np.float64)
            pts.append(voxel_to_ras(affine, ijk[:: max(1, len(ijk) // 200)]))
    return np.vstack(pts) if pts else np.zeros((0, 3))


def _group_across_series(v: dict[str, Any], out: Path) -> None:
    """One abnormality flagged in several comparisons of a visit (a lesion on
    FLAIR and T2w, against baseline and against the previous visit):
    :func:`mri_safety.change.grouping.group_across_series` over the visit's
    comparisons of one region. A "vs previous" comparison joins the "vs
    baseline" ones through the registrations of its follow-up series
    (previous visit -> this visit -> baseline, ``transform.tfm`` of the two
    register stages; :func:`_previous_to_baseline`); without them (a failed
    registration) it is grouped only with the other "vs previous" comparisons.
    Each grouped candidate gets ``same_abnormality``: the other members (``comparison``,
    ``candidate_id``, ``finding_id``); each tracked finding of the visit gets
    ``same_abnormality`` (the others' finding ids). :func:`_name_abnormalities`
    then names the groups and counts them."""
    import nibabel as nib
    import numpy as np

    from mri_safety.change.grouping import SeriesCandidates, comparison_key, group_across_series

    def transform(c: dict[str, Any] | None) -> Any:
        m = (c or {}).get("register_manifest")
        return None if not m else _read_transform((out / m).parent / "transform.tfm")

    vs_base = {c["followup_name"]: c for c in v["comparisons"]
               if c.get("kind") == "baseline" and c.get("candidates") is not None}
    sets: dict[tuple[str, str], list[SeriesCandidates]] = defaultdict(list)
    for c in v["comparisons"]:
        if not any(x.get("flagged") for x in c.get("candidates") or []):
            continue
        labels = affine = None
        path = (out / c["manifest"]).parent / "candidates.nii.gz"
        if path.is_file():
            im: Any = nib.load(str(path))
            labels, affine = np.asarray(im.dataobj), im.affine
        kind, shared = str(c.get("kind")), None
        if kind != "baseline":
            to_fu, prev_to_fu = transform(vs_base.get(c["followup_name"])), transform(c)
            if to_fu is not None and prev_to_fu is not None:
                shared = _previous_to_baseline(to_fu, prev_to_fu,
                                               _fit_points(c["candidates"], labels, affine))
                kind = "baseline" if shared is not None else kind
        sets[(kind, str(c.get("region")))].append(SeriesCandidates(
            comparison_key(c), c["candidates"], labels, affine, shared,
            contrast=c.get("contrast")))
    same_findings: dict[str, set[str]] = defaultdict(set)
    for _, members in sorted(sets.items()):
        by = {(s.key, int(x["id"])): x for s in members for x in s.candidates}
        for group in group_across_series(members):
            for k, cid in group:
                me = by[(k, cid)]
                me["same_abnormality"] = [
                    {"comparison": k2, "candidate_id": c2,
                     "finding_id": by[(k2, c2)].get("finding_id")}
                    for k2, c2 in group if (k2, c2) != (k, cid)]
                if me.get("finding_id"):
                    same_findings[str(me["finding_id"])].update(
                        str(by[m]["finding_id"]) for m in group
                        if m != (k, cid) and by[m].get("finding_id"))
    for f in v.get("findings", []):
        if same_findings.get(f["finding_id"]):
            f["same_abnormality"] = sorted(same_findings[f["finding_id"]])


def _name_abnormalities(visits: dict[tuple[str, str], dict[str, Any]]) -> None:
    """One ID per abnormality, kept across series and visits
    (:func:`mri_safety.change.grouping.abnormality_ids`). Each subject's visits
    in time order (``visit_index``); the abnormalities of a visit are the groups
    of :func:`_group_across_series` and every other flagged candidate
    (including a flagged ventricular enlargement). Each flagged candidate gets
    ``abnormality_id``; each visit gets ``abnormalities`` (``abnormality_id``,
    ``members``: comparison, candidate id, finding id; ``merged``: IDs of
    earlier abnormalities it now holds) and ``n_flagged_abnormalities``, their
    number."""
    from mri_safety.change.grouping import abnormality_ids, comparison_key
    from mri_safety.report.context import finding_id

    by_subject: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for (subject, visit), v in visits.items():
        by_subject[subject].append((v["visit_index"], visit, v))
    for _, items in sorted(by_subject.items()):
        items.sort(key=lambda t: (t[0], t[1]))
        per_visit: list[list[list[tuple[str, str | None]]]] = []
        members_of: list[list[list[tuple[dict[str, Any], str, int]]]] = []
        for _, _, v in items:
            flagged: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any]]] = {}
            for c in v["comparisons"]:
                for x in c.get("candidates") or []:
                    if x.get("flagged"):
                        flagged[(comparison_key(c), int(x["id"]))] = (c, x)
            for e in v.get("volume_change", []):
                for x in e.get("candidates") or []:
                    if x.get("flagged"):
                        flagged[(f"{e['followup_name']} vs {e['baseline_name']} (volume)",
                                 int(x.get("id", 0)))] = (e, x)
            seen: set[tuple[str, int]] = set()
            groups: list[list[tuple[str, int]]] = []
            for key in sorted(flagged):
                if key in seen:
                    continue
                g = [key] + [(str(o["comparison"]), int(o["candidate_id"]))
                             for o in flagged[key][1].get("same_abnormality", [])]
                g = sorted(k for k in set(g) if k in flagged)
                seen.update(g)
                groups.append(g)
            per_visit.append([[(finding_id(flagged[k][0], flagged[k][1]),
                                flagged[k][1].get("finding_id")) for k in g] for g in groups])
            members_of.append([[(flagged[k][1], k[0], k[1]) for k in g] for g in groups])
        for (_, _, v), names, groups_ in zip(items, abnormality_ids(per_visit), members_of,
                                             strict=True):
            v["abnormalities"] = []
            for name, members in zip(names, groups_, strict=True):
                for x, _, _ in members:
                    x["abnormality_id"] = name.abnormality_id
                v["abnormalities"].append({
                    "abnormality_id": name.abnormality_id, "merged": name.merged,
                    "members": [{"comparison": k, "candidate_id": cid,
                                 "finding_id": x.get("finding_id")} for x, k, cid in members]})
            v["n_flagged_abnormalities"] = len(v["abnormalities"])


def _link_ventricle_margin(v: dict[str, Any]) -> None:
    """Attach a visit's ``ventricle_margin`` brain candidates (tissue that became
    ventricular CSF) to its ventricle measurement
    (:func:`mri_safety.change.volume_finding.link_ventricle_margin`): to the
    flagged ventricular-enlargement finding when there is one; otherwise to the
    vs-baseline measurement, as change atrophy explains, when each comparison's
    margin candidates together hold no more than the growth it allows. Linked
    candidates are unflagged and carry ``linked_to``; the finding (or, when
    not flagged, the ``volume_change`` entry) lists them under
    ``linked_candidates`` (comparison and candidate ids)."""
    from mri_safety.change.grouping import comparison_key
    from mri_safety.change.volume_finding import explained_growth_mm3, link_ventricle_margin

    entries = [e for e in v.get("volume_change", []) if not e.get("error")]
    found = [x for e in entries for x in e.get("candidates", [])
             if x.get("flagged") and x.get("type") == "ventricular_enlargement"]
    holder: dict[str, Any]
    explained: float | None = None
    if found:
        holder, fid = found[0], str(found[0]["finding_id"])
    else:
        ref = [e for e in entries if e.get("reference_visit") == "baseline"
               and explained_growth_mm3(e) is not None]
        if not ref:
            return
        holder, explained = ref[0], explained_growth_mm3(ref[0])
        fid = f"{holder['region']}-ventricles-vs-{holder['reference_visit']}"
    for entry in v["comparisons"]:
        if entry.get("region") != "brain" or not entry.get("candidates"):
            continue
        ids = link_ventricle_margin(entry["candidates"], fid, explained)
        if ids:
            v["n_flagged"] -= len(ids)
            holder.setdefault("linked_candidates", []).append({
                "comparison": comparison_key(entry),
                "kind": entry.get("kind"), "candidate_ids": ids})


def _write_visit_summaries(
    out: Path,
    rows: list[SeriesReport],
    plans: dict[str, SeriesPlan],
    compared: list[tuple[Pair, StageResult | None, str]],
    summary: TrialSummary,
    qc: dict[str, dict[str, Any]],
    evidence: dict[tuple[str, str], str],
    sidecars: dict[str, dict[str, Any]],
    registered: dict[tuple[str, str], str],
    volumes: list[tuple[Pair, StageResult | BaseException]] | None = None,
    missing: dict[tuple[str, str], list[dict[str, str]]] | None = None,
) -> None:
    from mri_safety.qc.protocol import compare_protocol

    visits: dict[tuple[str, str], dict[str, Any]] = {}
    index = {(subject, visit): k for subject, srows in _rows_by_subject(rows).items()
             for k, visit in enumerate(_visit_order(srows, plans)[0])}
    for r in rows:
        if not r.subject:
            continue
        v = visits.setdefault((r.subject, r.session), {
            "subject": r.subject, "visit": r.session,
            "days_from_dosing": plans[r.key].visit.days_from_dosing,
            "visit_index": index[(r.subject, r.session)],
            "series": [], "comparisons": [], "n_flagged": 0, "not_assessable": [],
            "not_compared": (missing or {}).get((r.subject, r.session), []),
        })
        q = qc.get(r.output, {})
        if r.status != "converted" or q.get("verdict") == "unusable":
            v["not_assessable"].append(r.output or r.source)
        v["series"].append(_series_entry(r, q))
    for pair, res, err in sorted(compared, key=lambda t: (t[0].followup_name, t[0].kind)):
        v = visits[(pair.subject, pair.visit)]
        entry: dict[str, Any] = {**asdict(pair), "error": err}
        proto = compare_protocol(sidecars[pair.baseline_name], sidecars[pair.followup_name])
        entry["protocol_deviations"] = [asdict(d) for d in proto.deviations]
        entry["protocol_confidence"] = proto.confidence
        entry["evidence"] = evidence.get((pair.followup_name, pair.baseline_name))
        entry["register_manifest"] = registered.get((pair.followup_name, pair.baseline_name))
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
    for pair, vres in volumes or []:  # brain / ventricle volume change (Jacobian)
        v = visits[(pair.subject, pair.visit)]
        ventry = volume_entry(pair, vres, out)
        v.setdefault("volume_change", []).append(ventry)
        v["n_flagged"] += sum(1 for c in ventry.get("candidates", []) if c.get("flagged"))
    for v in visits.values():
        _link_ventricle_margin(v)
    _track_findings(visits, out)
    for v in visits.values():
        _group_across_series(v, out)
    _name_abnormalities(visits)
    for (subject, visit), v in sorted(visits.items()):
        problems = (v["not_assessable"] or v["not_compared"]
                    or any(c.get("error") for c in v["comparisons"])
                    or any(e.get("error") for e in v.get("volume_change", [])))
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
            "n_flagged_abnormalities": v["n_flagged_abnormalities"],
            "days_from_dosing": v["days_from_dosing"], "visit_index": v["visit_index"]}
