"""Within-visit partners and volume change in the trial pipeline.

* **DWI b-values** (:func:`dwi_bvalue`): DWI series are paired across visits
  by b-value; b0 references (b < :data:`B0_MAX`, T2-weighted EPI) are not
  compared (T2w and FLAIR cover their contrast); unknown b-values are
  compared as before.
* **Within-visit partners** (:func:`within_partners`): a ``dwi`` comparison
  gets the ADC series of both of its visits, a ``t1ce`` (post-contrast T1w)
  comparison the pre-contrast T1w of both visits (same subject, session and
  region; same 2D/3D acquisition first). The detect stage hashes them as
  inputs and passes them to :func:`mri_safety.change.multicontrast.apply_within_visit`.
  An ADC series used this way is not compared on its own (:func:`drop_partnered_adc`).
* **Volume change** (:func:`volume_stage`, a cached
  :class:`~pipelines.cache.StageStore` stage ``volume``): for each follow-up
  visit, the brain T1w (else T2w) comparison with the baseline is given to
  :func:`mri_safety.change.jacobian.volume_change` on the register stage's
  N4-corrected images, brain mask and rigid transform. Its result
  (``brain_volume_change_pct``, ``ventricle_volume_change_pct``,
  ``ventricular_enlargement``) goes into the visit summary under
  ``volume_change`` (:func:`volume_entry`); a flagged enlargement is a
  candidate (:func:`mri_safety.change.volume_finding.ventricular_candidate`)
  and counts in the visit's ``n_flagged``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mri_safety.change.multicontrast import WithinVisit
    from pipelines.cache import StageResult
    from pipelines.convert import SeriesReport
    from pipelines.trial import Pair

#: DWI series with a largest b-value below this (s/mm2) are b0 references
B0_MAX = 100.0
#: within-visit partner roles (detect-stage input names)
PARTNER_ROLES = ("adc_baseline", "adc_followup", "pre_baseline", "pre_followup")
#: library code of the volume stage (part of its cache key)
VOLUME_DEPS = ("mri_safety.change.jacobian", "mri_safety.change.volume_finding",
               "mri_safety.morphometry", "mri_safety.preprocess.grid", "pipelines.trial")
_SEQ_B = re.compile(r"_b(\d{1,5})(?!\d)", re.IGNORECASE)


def dwi_bvalue(sidecar: dict[str, Any], bval_text: str | None = None) -> float | None:
    """Largest b-value (s/mm2) of a converted DWI series, or None when unknown.

    Looked up in order: the ``.bval`` file's text, the sidecar's
    ``DiffusionBValue`` / ``bval``, a Siemens-style ``SequenceName`` such as
    ``*ep_b1000t`` or ``*ep_b0`` (``_b`` followed by digits), ``ImageType`` ``TRACEW`` (a
    trace-weighted image: diffusion-weighted, b unknown but > 0: returns
    1000.0 as a nominal high b).
    """
    if bval_text:
        vals = [float(v) for v in bval_text.split() if _number(v)]
        if vals:
            return max(vals)
    for key in ("DiffusionBValue", "bval"):
        v = sidecar.get(key)
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
            return float(max(v))
    found = _SEQ_B.findall(str(sidecar.get("SequenceName") or ""))
    if found:
        return max(float(v) for v in found)
    itype = [str(x).upper() for x in sidecar.get("ImageType") or []]
    if "TRACEW" in itype:
        return 1000.0
    return None


def _number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def bvalue_class(b: float | None) -> str:
    """``b0`` / ``high`` / ``unknown``: DWI series are paired within a class."""
    if b is None:
        return "unknown"
    return "b0" if b < B0_MAX else "high"


def series_bvalues(rows: list[SeriesReport], series_dir: dict[str, Path]
                   ) -> dict[str, float | None]:
    """b-value of every converted DWI row (output name -> b or None), from the
    sidecar and ``.bval`` beside each NIfTI in ``series_dir[output]``. A
    sidecar that cannot be read gives None (the series is then paired as
    before)."""
    out: dict[str, float | None] = {}
    for r in rows:
        if r.status != "converted" or r.contrast != "DWI" or r.output not in series_dir:
            continue
        d = series_dir[r.output]
        base = r.output[: -len(".nii.gz")] if r.output.endswith(".nii.gz") else r.output
        try:
            side = json.loads((d / f"{base}.json").read_text())
        except (OSError, json.JSONDecodeError):
            side = {}
        bval = d / f"{base}.bval"
        out[r.output] = dwi_bvalue(side, bval.read_text() if bval.is_file() else None)
    return out


def _partner(rows: list[SeriesReport], subject: str, session: str, region: str, contrast: str,
             post: bool, like_acq: str) -> str | None:
    cands = [r for r in rows if r.status == "converted" and r.subject == subject
             and r.session == session and r.region == region and r.contrast == contrast
             and bool(r.post_contrast) == post]
    cands.sort(key=lambda r: (r.acq != like_acq, r.output))
    return cands[0].output if cands else None


def within_partners(pair: Pair, rows: list[SeriesReport]) -> dict[str, str]:
    """Partner series (role -> output name) of a comparison: ADC of both visits for
    ``dwi``, pre-contrast T1w of both visits for ``t1ce``; a visit without one
    has no entry. ``rows``: converted, usable series of the run."""
    if pair.contrast not in ("dwi", "t1ce") or pair.region != "brain":
        return {}
    by_name = {r.output: r for r in rows}
    fu = by_name.get(pair.followup_name)
    if fu is None:
        return {}
    contrast, post, prefix = (("ADC", False, "adc") if pair.contrast == "dwi"
                              else ("T1w", False, "pre"))
    out = {}
    for role, session in (("baseline", pair.reference_visit), ("followup", pair.visit)):
        name = _partner(rows, pair.subject, session, fu.region, contrast, post, fu.acq)
        if name is not None:
            out[f"{prefix}_{role}"] = name
    return out


def drop_partnered_adc(pairs: list[Pair]) -> list[Pair]:
    """Drop the ADC comparisons whose follow-up ADC is the within-visit partner of a
    DWI comparison of the same kind and reference visit: new restricted
    diffusion is judged there (DWI high and ADC low at the same place); an ADC
    decrease on its own is partial volume and flow as often as a finding (on
    the synthetic trial 8 flagged ADC decreases in one visit, none of them the
    infarct that the DWI comparison found)."""
    used = {(p.within.get("adc_followup"), p.kind, p.reference_visit) for p in pairs
            if p.contrast == "dwi"}
    return [p for p in pairs if not (
        p.contrast == "adc" and (p.followup_name, p.kind, p.reference_visit) in used)]


def load_within(inputs: dict[str, Path]) -> WithinVisit | None:
    """The :class:`~mri_safety.change.multicontrast.WithinVisit` of a detect stage's
    partner inputs (None when it has none). An unreadable partner is left out
    and named in ``notes``: the comparison still runs."""
    from mri_safety.change.compare import _load
    from mri_safety.change.multicontrast import WithinVisit

    roles = [r for r in PARTNER_ROLES if r in inputs]
    if not roles:
        return None
    w = WithinVisit()
    for role in roles:
        try:
            setattr(w, role, _load(inputs[role]))
        except ValueError as e:
            w.notes.append(f"{role}: {e}")
    return w


# --------------------------------------------------------------------------
# volume change


def volume_pairs(pairs: list[Pair]) -> dict[int, Pair]:
    """Index -> pair of the comparisons that get a volume-change stage: per
    follow-up visit, the brain T1w comparison with the baseline (3D first,
    then by name), else the brain T2w one."""
    best: dict[tuple[str, str], tuple[tuple[int, bool, str], int]] = {}
    for i, p in enumerate(pairs):
        if p.kind != "baseline" or p.region != "brain" or p.contrast not in ("t1w", "t2w"):
            continue
        rank = (0 if p.contrast == "t1w" else 1, "3d" not in p.followup_name.lower(),
                p.followup_name)
        key = (p.subject, p.visit)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, i)
    return {i: pairs[i] for _, i in sorted(best.values(), key=lambda t: t[1])}


def volume_stage(inputs: dict[str, Path], out: Path, contrast: str, params: dict[str, Any],
                 registered: Path, itk_threads: int = 1) -> dict[str, Any]:
    """Brain / ventricle volume change of one registered follow-up vs baseline.

    From the register stage folder ``registered``: N4-corrected baseline, the
    follow-up's N4 image resampled (linear) onto the baseline grid through the
    rigid transform, the baseline brain mask; ventricles from
    :func:`mri_safety.morphometry.volumes.ventricle_mask` on the baseline
    (CSF dark on T1w, bright on T2w). Writes ``volume_change.json`` (the
    figures, the parameters, the candidate when flagged) and
    ``jacobian.nii.gz`` (float32 Jacobian determinant on the baseline grid).
    """
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.change.jacobian import VolumeChangeParams, volume_change
    from mri_safety.change.masks import arr, img_like
    from mri_safety.change.volume_finding import ventricular_candidate
    from mri_safety.morphometry.volumes import ventricle_mask
    from mri_safety.threads import itk_threads as _itk
    from pipelines.trial import load_registered

    p = VolumeChangeParams(**params)
    rp = load_registered(registered, inputs["baseline"], inputs["followup"])
    with _itk(itk_threads):
        fu = sitk.Resample(rp.followup_n4, rp.baseline_n4, rp.transform, sitk.sitkLinear, 0.0,
                           sitk.sitkFloat32)
        sp = tuple(float(s) for s in rp.baseline.GetSpacing())
        vent = ventricle_mask(arr(rp.baseline_n4), rp.brain, (sp[0], sp[1], sp[2]),
                              "dark" if contrast == "t1w" else "bright")
        vc = volume_change(rp.baseline_n4, fu, rp.brain, vent, p)
    d = vc.as_dict()
    cand = ventricular_candidate(d, p.ventricle_min_pct)
    doc = {**d, "contrast": contrast, "parameters": asdict(p),
           "method": "Jacobian determinant of diffeomorphic demons on the rigidly registered, "
                     "N4-corrected images (mri_safety.change.jacobian)",
           "candidates": [cand] if cand else []}
    (out / "volume_change.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sitk.WriteImage(img_like(vc.jacobian.astype(np.float32), rp.baseline),
                    str(out / "jacobian.nii.gz"), useCompression=True)
    return d


def run_volume(root: str, reg: StageResult, baseline: Path, followup: Path, contrast: str,
               params: dict[str, Any], threads: int) -> StageResult:
    """The ``volume`` stage of one registered pair (keyed by the register stage's
    digest, the raw inputs, the parameters and the code)."""
    from pipelines.cache import StageStore

    return StageStore(root).run("volume", volume_stage,
                                {"baseline": baseline, "followup": followup},
                                {"contrast": contrast, "params": params, "itk_threads": threads},
                                extra_key={"register": reg.digest},
                                context={"registered": reg.path}, code_deps=VOLUME_DEPS)


def volume_entry(pair: Pair, res: StageResult | BaseException, out: Path) -> dict[str, Any]:
    """The ``volume_change`` entry of a visit summary for one volume stage
    outcome: the pair (series names, region, contrast, reference visit), the
    figures and candidates from ``volume_change.json`` with the stage manifest,
    or ``error``."""
    from pipelines.cache import StageResult

    entry: dict[str, Any] = {"region": pair.region, "contrast": pair.contrast,
                             "reference_visit": pair.reference_visit,
                             "baseline_name": pair.baseline_name,
                             "followup_name": pair.followup_name, "error": ""}
    if not isinstance(res, StageResult):
        entry["error"] = f"volume {pair.followup_name} vs {pair.baseline_name}: {res}"
        return entry
    doc = json.loads((res.path / "volume_change.json").read_text())
    manifest = str((res.path / "manifest.json").relative_to(out))
    entry.update({k: doc.get(k) for k in (
        "brain_volume_change_pct", "ventricle_volume_change_pct", "ventricle_volume_mm3",
        "atrophy_allowance_pct", "ventricle_limit_pct", "ventricular_enlargement")})
    entry["manifest"] = manifest
    fid = f"{pair.region}-ventricles-vs-{pair.reference_visit}"
    entry["candidates"] = [{**c, "finding_id": fid, "manifest": manifest}
                           for c in doc.get("candidates", [])]
    return entry
