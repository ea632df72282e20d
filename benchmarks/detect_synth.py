"""Detection on synthetic studies by abnormality type and size (issue 5 bars).

Usage::

    python benchmarks/detect_synth.py [--study DIR ... | --patients N --seeds S ...] [--no-write]

For every follow-up visit of a generated study (``mri_safety.synth``, preset
small) each contrast that can show a new abnormality is compared with its
baseline (``mri_safety.change.compare.detect_pair``, the same call as
``mri-safety compare``): FLAIR and T2w (each pooled with the other), T1w (with
FLAIR and T2w as extra contrasts),
post-contrast T1w (``t1ce``, with the pre-contrast T1w of both visits), DWI
b1000 (``dwi``, with the ADC maps of both visits), T2*w (``t2starw``) and the
spine T2w and T1w (``--region spine``): the pairs, pools and within-visit
partners of the pipeline (``pipelines.trial``). Like the pipeline, each
follow-up after the first is also compared with the previous visit (brain
series; ``--no-previous`` skips it): there an abnormality counts as new when it
appeared or grew since that visit, and a flagged candidate on one already
present then is a true change scored apart (neither a find nor a false
positive); the truth labels go onto the previous visit's grid through the
inverse of its true pose.
Ventricular enlargement is judged by ``mri_safety.change.jacobian`` on the
T1w pair. An abnormality counts as found at a visit when a flagged candidate
of any of that visit's comparisons touches it within one voxel (the truth
label, 0.5 mm baseline grid, is brought onto each comparison's baseline grid
by linear resampling of its indicator, > 0.25; an abnormality smaller than the
gaps between voxel centres gets the voxel it fills most,
``mri_safety.evaluation.truth``). A flagged candidate touching
no abnormality is a false positive of its pair; one touching only the tissue
that became CSF of enlarged ventricles is a true change counted apart (the
ventricles are judged by the Jacobian). Candidates marked ``ventricle_margin``
are attached to the ventricle measurement and unflagged first, as the pipeline
does (``mri_safety.change.volume_finding.link_ventricle_margin``): to a flagged
ventricular enlargement, or, without one, as growth atrophy explains when their
volumes sum to no more than it allows. Sizes are equivalent-sphere
diameters of the baseline-space truth label. The anatomical region of each
flagged candidate on an abnormality is checked against the region of the truth
voxels through the generator's own subject -> MNI mapping. Writes the section
"Detection on synthetic studies" of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_param_overrides, params_from, write_section  # noqa: E402

from mri_safety.change.compare import detect_pair  # noqa: E402
from mri_safety.change.jacobian import volume_change  # noqa: E402
from mri_safety.change.masks import arr  # noqa: E402
from mri_safety.change.multicontrast import within_visit_from_extra  # noqa: E402
from mri_safety.change.params import DetectParams  # noqa: E402
from mri_safety.change.region import region_of  # noqa: E402
from mri_safety.change.volume_finding import (  # noqa: E402
    explained_growth_mm3,
    link_ventricle_margin,
)
from mri_safety.evaluation.truth import truth_on_grid  # noqa: E402
from mri_safety.morphometry.volumes import ventricle_mask  # noqa: E402
from mri_safety.preprocess.bias import n4_correct  # noqa: E402
from mri_safety.preprocess.masks import brain_masks  # noqa: E402
from mri_safety.register.transforms import sitk_affine_ras  # noqa: E402
from mri_safety.synth.anatomy import get_anatomy  # noqa: E402
from mri_safety.synth.sitkutil import array_to_sitk  # noqa: E402

warnings.filterwarnings("ignore")

#: series kind -> (compare contrast, region)
PAIRS = {"FLAIR": ("flair", "brain"), "T2w": ("t2w", "brain"), "T1w": ("t1w", "brain"),
         "T1w_post": ("t1ce", "brain"), "DWI_b1000": ("dwi", "brain"),
         "T2starw": ("t2starw", "brain"), "spine_T2w": ("t2w", "spine"),
         "spine_T1w": ("t1w", "spine")}
#: within-visit partner series and its compare contrast, as the pipeline gives them
#: (split off the extra pairs by multicontrast.within_visit_from_extra, as in mri-safety compare)
WITHIN = {"DWI_b1000": ("ADC", "adc"), "T1w_post": ("T1w", "t1w")}
#: brain series given other series of the same visits as extra contrasts, as the pipeline
#: does (pipelines.trial.extra_partners): FLAIR and T2w pooled with each other, T1w with both
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "FLAIR": (("T2w", "t2w"),), "T2w": (("FLAIR", "flair"),),
    "T1w": (("FLAIR", "flair"), ("T2w", "t2w"))}
SIZE_BINS = ((2.0, 3.0), (3.0, 5.0), (5.0, 10.0), (10.0, np.inf))
#: detection parameters of this run (``--set``); None = configs/detection.yaml
PARAMS: DetectParams | None = None


def _load(path: Path) -> sitk.Image:
    import nibabel as nib

    im: Any = nib.load(str(path))
    return array_to_sitk(np.asarray(im.dataobj, np.float32), im.affine)


def _diameter_mm(labels: sitk.Image, i: int) -> float:
    vol = float((arr(labels) == i).sum() * np.prod(labels.GetSpacing()))
    return float(np.cbrt(6.0 * vol / np.pi))


def _bin(d: float, bins: tuple[tuple[float, float], ...] = SIZE_BINS) -> str:
    """Label of the size bin of diameter ``d`` (mm); the last bin is open."""
    for lo, hi in bins:
        if lo <= d < hi:
            return f"{lo:g}-{hi:g} mm" if np.isfinite(hi) else f">{lo:g} mm"
    return "<2 mm"


def _detect(gt: Path, ref: str, vname: str, kind: str) -> tuple[Any, sitk.Image, float]:
    """The comparison of series ``kind`` of visit ``vname`` with visit ``ref``
    (``baseline`` or the previous visit), with the pool and within-visit partners
    the pipeline gives it; returns (result, reference image, seconds)."""
    contrast, region = PAIRS[kind]
    b = _load(gt / ref / "volumes" / f"{kind}.nii.gz")
    f = _load(gt / vname / "volumes" / f"{kind}.nii.gz")
    partners = [*EXTRAS.get(kind, ()), *([WITHIN[kind]] if kind in WITHIN else [])]
    extra, within = within_visit_from_extra(contrast, [
        (_load(gt / ref / "volumes" / f"{ek}.nii.gz"),
         _load(gt / vname / "volumes" / f"{ek}.nii.gz"), ec) for ek, ec in partners])
    t0 = time.perf_counter()
    res = detect_pair(b, f, contrast=contrast, region=region, extra=extra, within=within,
                      params=PARAMS)
    return res, b, time.perf_counter() - t0


def _score(res: Any, truth: dict[int, np.ndarray], apart: dict[str, list[np.ndarray]],
           linked: list[int]) -> dict[str, Any]:
    """What the flagged candidates of one comparison touch (within one voxel):
    ``hit`` truth ids, ``fp`` (touching no truth and nothing of ``apart``),
    ``apart`` counts per category (true changes scored elsewhere: tissue that
    became ventricular CSF, abnormalities already present at the reference visit),
    ``linked_on``: what the candidates attached to the ventricular-enlargement
    finding (``linked``) lie on, ``flagged``, ``touch``: (candidate, truth id) pairs."""
    out: dict[str, Any] = {"hit": set(), "fp": 0, "apart": defaultdict(int),
                           "linked_on": defaultdict(int), "flagged": 0, "touch": []}
    for c in res.candidates:
        if not (c["flagged"] or c["id"] in linked):
            continue
        near = ndi.binary_dilation(res.labels == c["id"], np.ones((3, 3, 3), bool))
        touched = [i for i, m in truth.items() if np.any(m & near)]
        on = next((k for k, ms in apart.items() if any(np.any(m & near) for m in ms)), None)
        if c["id"] in linked:  # attached to the enlargement finding, unflagged
            out["linked_on"]["abnormality" if touched else on or "elsewhere"] += 1
            continue
        out["flagged"] += 1
        out["hit"].update(touched)
        out["touch"] += [(c, i) for i in touched]
        if not touched:
            if on is None:
                out["fp"] += 1
            else:
                out["apart"][on] += 1
    return out


def evaluate(study: Path, tag: str = "", only: set[str] | None = None,
             previous: bool = True) -> dict[str, Any]:
    """Scores of one study; ``tag`` prefixes its patient ids in the lists; ``only``:
    ``PATIENT:VISIT`` names of the follow-ups to score (default all); ``previous``:
    also score each follow-up after the first against the previous visit, as the
    pipeline compares it (brain series; keys ``prev_*``)."""
    found_by_type: dict[str, list[bool]] = defaultdict(list)
    found_by_size: dict[str, list[bool]] = defaultdict(list)
    fp_pairs: list[tuple[str, int]] = []
    vent_pairs: list[tuple[str, int]] = []  # flagged candidates on enlarged ventricles
    linked_on: dict[str, int] = defaultdict(int)  # candidates linked to the enlargement finding
    nochange_flagged: list[tuple[str, int]] = []
    missed: list[str] = []
    seconds: list[float] = []
    prev_found: dict[str, list[bool]] = defaultdict(list)
    prev_fp: list[tuple[str, int]] = []
    prev_apart: dict[str, int] = defaultdict(int)
    prev_missed: list[str] = []
    regions: list[tuple[str, str, str, float]] = []  # (what, truth region, found region, mm)
    s2m = np.linalg.inv(get_anatomy(1.0).mni_to_subject)  # the generator's MNI mapping
    vent_key = "new ventricular CSF"
    for tj in sorted((study / "ground_truth").glob("*/truth.json")):
        t = json.loads(tj.read_text())
        gt = tj.parent
        pid = f"{tag}{t['patient_id']}"
        for vi, v in enumerate(t["visits"][1:], start=1):
            vname, ids = v["name"], list(v["new_abnormality_ids"])
            if only and f"{t['patient_id']}:{vname}" not in only:
                continue
            kinds = {i: t["abnormalities"][i - 1]["kind"] for i in ids}
            brain_lab = _load(gt / vname / "labels_baseline.nii.gz")
            spine_lab = _load(gt / vname / "spine_labels_baseline.nii.gz")
            spine_ids = sorted(int(x) for x in np.unique(arr(spine_lab)) if x > 0)
            hit: set[tuple[str, int]] = set()
            best: dict[tuple[str, int], tuple[float, str]] = {}  # largest |z| in the truth
            n_flag_visit = 0
            # ventricular enlargement: Jacobian on the T1w pair, true transform
            b1 = _load(gt / "baseline" / "volumes" / "T1w.nii.gz")
            f1 = _load(gt / vname / "volumes" / "T1w.nii.gz")
            tx = sitk.ReadTransform(str(gt / vname / "followup_to_baseline.tfm"))
            b1, _ = n4_correct(b1)
            f1, _ = n4_correct(f1)
            brain = arr(brain_masks(b1).brain) > 0
            vmask = ventricle_mask(arr(b1), brain, tuple(b1.GetSpacing()), "dark")
            vc = volume_change(b1, sitk.Resample(f1, b1, tx, sitk.sitkLinear, 0.0), brain, vmask)
            n_flag_visit += int(vc.ventricular_enlargement)
            explained = (None if vc.ventricular_enlargement
                         else explained_growth_mm3(vc.as_dict()))
            for kind, (_contrast, region) in PAIRS.items():
                res, b, sec = _detect(gt, "baseline", vname, kind)
                seconds.append(sec)
                # as the pipeline does: candidates on tissue that became ventricular CSF are
                # attached to the ventricle measurement (flagged enlargement, or growth that
                # atrophy explains when their volume is within it), not flagged one by one
                linked = (link_ventricle_margin(res.candidates, "ventricles", explained)
                          if region == "brain" else [])
                lab_img, tids = ((spine_lab, spine_ids) if region == "spine"
                                 else (brain_lab, [i for i in ids if kinds[i] != "ventricles"]))
                truth = truth_on_grid(lab_img, tids, b)
                # tissue that became CSF of enlarged ventricles: a true change, judged by the
                # Jacobian below; a candidate there is neither a find nor a false positive
                vent = truth_on_grid(brain_lab, [i for i in ids if kinds[i] == "ventricles"], b) \
                    if region == "brain" else {}
                for i, m in truth.items():
                    zi = float(np.abs(res.z[m]).max()) if m.any() else 0.0
                    if zi >= best.get((region, i), (-1.0, ""))[0]:
                        best[(region, i)] = (zi, kind)
                sc = _score(res, truth, {vent_key: list(vent.values())}, linked)
                if region == "brain":
                    regions += _region_check(sc["touch"], truth, b, s2m, t, f"{pid} {vname} {kind}")
                for k, n in sc["linked_on"].items():
                    why = "enlarged" if vc.ventricular_enlargement else "within atrophy"
                    linked_on[f"{why}: {k}"] += n
                n_flag_visit += sc["flagged"]
                hit.update((region, i) for i in sc["hit"])
                fp_pairs.append((f"{pid} {vname} {kind}", sc["fp"]))
                if sc["apart"][vent_key]:
                    vent_pairs.append((f"{pid} {vname} {kind}", sc["apart"][vent_key]))
            for i in ids:
                k = kinds[i]
                ok = (vc.ventricular_enlargement if k == "ventricles"
                      else ("brain", i) in hit)
                found_by_type[k].append(ok)
                if k not in ("ventricles", "subdural"):
                    found_by_size[_bin(_diameter_mm(brain_lab, i))].append(ok)
                if not ok:
                    zb, kb = best.get(("brain", i), (0.0, "-"))
                    missed.append(f"{pid} {vname} #{i} {k} {_diameter_mm(brain_lab, i):.1f} mm"
                                  f" (largest |z| {zb:.1f}, {kb})")
            for i in spine_ids:
                sk = t["spine_abnormalities"][i - 1]["kind"] if i <= len(
                    t["spine_abnormalities"]) else "spine"
                ok = ("spine", i) in hit
                found_by_type[f"spine {sk}"].append(ok)
                if not ok:
                    zb, kb = best.get(("spine", i), (0.0, "-"))
                    missed.append(f"{pid} {vname} spine #{i} {sk} (largest |z| {zb:.1f})")
            if not ids and not spine_ids:
                nochange_flagged.append((f"{pid} {vname}", n_flag_visit))
            if not previous or vi < 2:
                continue
            # vs the previous visit (brain): new since then = appeared (or grew) at this
            # visit; abnormalities already there are true, scored apart (they may evolve)
            pname = t["visits"][vi - 1]["name"]
            earlier = [i for i in t["visits"][vi - 1]["new_abnormality_ids"]
                       if t["abnormalities"][i - 1]["kind"] != "ventricles"]
            new = [i for i in ids if i not in t["visits"][vi - 1]["new_abnormality_ids"]]
            ptx = sitk.ReadTransform(str(gt / pname / "followup_to_baseline.tfm")).GetInverse()
            prev_lab = _load(gt / pname / "labels_baseline.nii.gz")
            pbest: dict[int, float] = {}
            phit: set[int] = set()
            for kind, (_contrast, region) in PAIRS.items():
                if region != "brain":
                    continue
                res, b, sec = _detect(gt, pname, vname, kind)
                seconds.append(sec)
                linked = link_ventricle_margin(res.candidates, "ventricles", explained)
                focal = [i for i in new if kinds[i] != "ventricles"]
                truth = truth_on_grid(brain_lab, focal, b, ptx)
                vent = truth_on_grid(brain_lab, [i for i in new if i not in focal], b, ptx)
                before = truth_on_grid(prev_lab, earlier, b, ptx)
                for i, m in truth.items():
                    pbest[i] = max(pbest.get(i, 0.0),
                                   float(np.abs(res.z[m]).max()) if m.any() else 0.0)
                sc = _score(res, truth, {vent_key: list(vent.values()),
                                         "abnormality present at the previous visit":
                                         list(before.values())}, linked)
                phit.update(sc["hit"])
                prev_fp.append((f"{pid} {vname} vs {pname} {kind}", sc["fp"]))
                for k, n in sc["apart"].items():
                    prev_apart[k] += n
            for i in new:
                k = kinds[i]
                if k == "ventricles":  # judged by the Jacobian vs baseline
                    continue
                prev_found[k].append(i in phit)
                if i not in phit:
                    prev_missed.append(f"{pid} {vname} vs {pname} #{i} {k} "
                                       f"{_diameter_mm(brain_lab, i):.1f} mm (largest |z| "
                                       f"{pbest.get(i, 0.0):.1f})")
    return {"by_type": found_by_type, "by_size": found_by_size, "fp_pairs": fp_pairs,
            "vent_pairs": vent_pairs, "linked_on": dict(linked_on),
            "nochange": nochange_flagged, "missed": missed, "seconds": seconds,
            "prev_found": prev_found, "prev_fp": prev_fp, "prev_apart": dict(prev_apart),
            "prev_missed": prev_missed, "regions": regions}


def _region_check(touch: list[tuple[dict[str, Any], int]], truth: dict[int, np.ndarray],
                  grid: sitk.Image, s2m: np.ndarray, t: dict[str, Any], what: str
                  ) -> list[tuple[str, str, str, float]]:
    """For each flagged candidate on abnormality ``i``: the coarse region of the truth
    voxels and the MNI point of the abnormality's centre through the GENERATOR's
    subject -> MNI mapping ``s2m`` (its own affine fit of the 1 mm real head), beside
    the candidate's ``anatomical_region`` and ``mni_ras_mm`` (the compare's fit of
    the baseline image); the distance is between the two MNI points (mm)."""
    base_pose = np.asarray(t["visits"][0]["pose_subject_to_scanner_ras"])  # subject -> scanner
    aff = sitk_affine_ras(grid)
    out = []
    for c, i in touch:
        if "mni_ras_mm" not in c["location"]:
            continue
        ijk = np.argwhere(truth[i]).astype(np.float64)
        scan = ijk @ aff[:3, :3].T + aff[:3, 3]
        subj = (np.c_[scan, np.ones(len(scan))] @ np.linalg.inv(base_pose).T)[:, :3]
        centre = (s2m @ np.append(t["abnormalities"][i - 1]["centre_ras"], 1.0))[:3]
        dist = float(np.linalg.norm(np.asarray(c["location"]["mni_ras_mm"]) - centre))
        out.append((f"{what} #{i} {t['abnormalities'][i - 1]['kind']}", region_of(subj, s2m),
                    str(c["location"]["anatomical_region"]), dist))
    return out


def _table(r: dict[str, Any], cmd: str) -> str:
    lines = [cmd, "", "| abnormality type | found | sensitivity |", "|---|---|---|"]
    for k, v in sorted(r["by_type"].items()):
        lines.append(f"| {k} | {sum(v)} of {len(v)} | {sum(v) / len(v):.2f} |")
    lines += ["", "| size (brain, focal) | found | sensitivity | bar |", "|---|---|---|---|"]
    # the bars: >= 0.80 for 3-5 mm, >= 0.95 for >= 5 mm (both bands pooled)
    bars = {"3-5 mm": ">= 0.80"}
    for k, v in sorted(r["by_size"].items()):
        lines.append(f"| {k} | {sum(v)} of {len(v)} | {sum(v) / len(v):.2f} | "
                     f"{bars.get(k, '')} |")
    big = [x for k in ("5-10 mm", ">10 mm") for x in r["by_size"].get(k, [])]
    if big:
        lines.append(f"| >= 5 mm (the two rows above) | {sum(big)} of {len(big)} | "
                     f"{sum(big) / len(big):.2f} | >= 0.95 |")
    fps = [n for _, n in r["fp_pairs"]]
    lines += ["", f"Flagged false positives: {sum(fps)} over {len(fps)} contrast pairs "
              f"({sum(fps) / max(len(fps), 1):.2f} per pair; bar <= 0.5). Pairs with any: "
              + (", ".join(f"{p} ({n})" for p, n in r["fp_pairs"] if n) or "none") + ".", ""]
    if r["vent_pairs"]:
        lines += ["Flagged candidates on the tissue that became CSF of enlarged ventricles "
                  "(true changes, counted neither as found nor as false positives): "
                  + ", ".join(f"{p} ({n})" for p, n in r["vent_pairs"]) + ".", ""]
    if r["linked_on"]:
        lines += ["Candidates attached to the ventricle measurement (tissue that became "
                  "ventricular CSF; unflagged, as in the pipeline), by the visit's ventricle "
                  "verdict and what they lie on (an abnormality here would be a true change "
                  "hidden): "
                  + ", ".join(f"{k} {n}" for k, n in sorted(r["linked_on"].items())) + ".", ""]
    if r["nochange"]:
        lines.append("Follow-ups without any new abnormality (atrophy only): " + ", ".join(
            f"{p}: {n} flagged" for p, n in r["nochange"]) + " (bar: 0).")
    lines.append("")
    lines.append("Missed: " + (", ".join(r["missed"]) or "none") + ".")
    if r["prev_fp"]:
        pf = [n for _, n in r["prev_fp"]]
        lines += ["", "Each follow-up after the first against the PREVIOUS visit (brain series, "
                  "as the pipeline compares it; new = appeared or grew since that visit; the "
                  "spine is not scored here, its truth has no map between two follow-ups' "
                  "bent necks):", "", "| abnormality type | found | sensitivity |",
                  "|---|---|---|"]
        for k, v in sorted(r["prev_found"].items()):
            lines.append(f"| {k} | {sum(v)} of {len(v)} | {sum(v) / len(v):.2f} |")
        allv = [x for v in r["prev_found"].values() for x in v]
        lines += [f"| all | {sum(allv)} of {len(allv)} | {sum(allv) / max(len(allv), 1):.2f} |",
                  "", f"Flagged false positives: {sum(pf)} over {len(pf)} contrast pairs "
                  f"({sum(pf) / len(pf):.2f} per pair). Pairs with any: "
                  + (", ".join(f"{p} ({n})" for p, n in r["prev_fp"] if n) or "none") + "."]
        if r["prev_apart"]:
            lines.append("Flagged on true changes scored apart: " + ", ".join(
                f"{k} {n}" for k, n in sorted(r["prev_apart"].items())) + ".")
        lines.append("Missed: " + (", ".join(r["prev_missed"]) or "none") + ".")
    if r["regions"]:
        lines += ["", "Anatomical region of the flagged candidates on a true abnormality "
                  "(brain, against baseline) beside the region of the truth voxels through "
                  "the GENERATOR's own subject -> MNI mapping, and the distance from the "
                  "candidate's MNI centroid to the abnormality's MNI centre. The generator's "
                  "mapping (anatomy v5) lies 0.5 mm (mean) / 1.3 mm (max) from the mask "
                  "step's own fit of the real head over the MNI brain (docs/synth.md); the "
                  "rest is the method's fit to each synthetic series and the lobar "
                  "boundaries a candidate straddles:",
                  "", "| series | same region | MNI distance median | 90th pct | max |",
                  "|---|---|---|---|---|"]
        for name, keep in (("T1w, T1w_post", lambda w: w.split()[-3].startswith("T1w")),
                           ("other brain series", lambda w: not w.split()[-3].startswith("T1w"))):
            rg = [x for x in r["regions"] if keep(x[0])]
            if not rg:
                continue
            d = np.array([x[3] for x in rg])
            same = sum(1 for x in rg if x[1] == x[2])
            lines.append(f"| {name} | {same} of {len(rg)} ({same / len(rg):.2f}) | "
                         f"{np.median(d):.1f} mm | {np.percentile(d, 90):.1f} mm | "
                         f"{d.max():.1f} mm |")
        lines.append("")
        lines.append("Different: " + (", ".join(f"{w} (truth {a}, found {b})"
                                                 for w, a, b, _ in r["regions"] if a != b)
                                       or "none") + ".")
    lines.append("")
    lines.append(f"Time per contrast pair: mean {np.mean(r['seconds']):.1f} s "
                 f"(max {np.max(r['seconds']):.1f} s), 2 cores shared.")
    return "\n".join(lines)


def _merge(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the results of several studies (lists concatenated per key)."""
    out: dict[str, Any] = {"by_type": defaultdict(list), "by_size": defaultdict(list),
                           "prev_found": defaultdict(list), "linked_on": defaultdict(int),
                           "prev_apart": defaultdict(int)}
    for r in rs:
        for key in ("by_type", "by_size", "prev_found"):
            for k, v in r[key].items():
                out[key][k] += v
        for key in ("fp_pairs", "vent_pairs", "nochange", "missed", "seconds", "prev_fp",
                    "prev_missed", "regions"):
            out.setdefault(key, []).extend(r[key])
        for key in ("linked_on", "prev_apart"):
            for k, n in r[key].items():
                out[key][k] += n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", type=Path, action="append", default=None,
                    help="a generated study to reuse (repeat for several)")
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7])
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--only", nargs="+", default=None, metavar="PATIENT:VISIT",
                    help="score only these follow-ups (a check; implies --no-write)")
    ap.add_argument("--no-previous", dest="previous", action="store_false",
                    help="skip the comparisons with the previous visit")
    add_param_overrides(ap)
    a = ap.parse_args()
    global PARAMS
    PARAMS = params_from(a.overrides)
    a.write = a.write and PARAMS is None
    studies = a.study
    if studies is None:
        from mri_safety.synth import synth_main

        studies = [synth_main(Path(tempfile.mkdtemp(prefix=f"detect_synth_{s}_")), a.patients,
                              s, "small") for s in a.seeds]
    # each study is tagged by its seed (a generated study is a function of it)
    tags = [f"s{json.loads(next((s / 'ground_truth').glob('*/truth.json')).read_text())['seed']}:"
            for s in studies]
    only = set(a.only) if a.only else None
    r = _merge([evaluate(s, tag, only, a.previous)
                for s, tag in zip(studies, tags, strict=True)])
    if a.study:
        seeds = sorted({json.loads(tj.read_text())["seed"] for s in studies
                        for tj in (s / "ground_truth").glob("*/truth.json")})
        what = f"{len(studies)} given studies of seeds {', '.join(map(str, seeds))}"
    else:
        what = f"{a.patients} patients per seed, seeds {', '.join(map(str, a.seeds))}"
    cmd = (f"`python benchmarks/detect_synth.py` on generated studies ({what}, preset small;"
           " patient ids repeat across seeds, each seed is its own trial): every abnormality"
           " type through the contrast that shows it; found = touched by a flagged candidate"
           " of the visit within one voxel.")
    body = _table(r, cmd)
    print(body)
    if a.write and not only:
        write_section("Detection on synthetic studies (issue 5)", body)


if __name__ == "__main__":
    main()
