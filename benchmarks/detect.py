"""Benchmark of candidate detection (issue 5): real MS follow-ups with FROC against the
plain subtraction baseline, real no-change pairs, synthetic pairs when available,
and time per pair. Writes the "Detection" section of benchmarks/results.md.

Usage: python benchmarks/detect.py [--synth STUDY_DIR] [--skip-positions]

Scoring (mri_safety.evaluation.scoring): expert lesions = 26-connected
components of gt.nii.gz with >= 3 voxels in the MS common space; a lesion is
found when a flagged candidate touches it within one voxel; a false positive
is a flagged candidate touching none. Our candidate label maps (baseline =
study1 raw FLAIR space) are brought into the common space with the provided
study1_FLAIR_to_common_space transform for scoring only (the method registers
the follow-up to the baseline itself).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from mri_safety.change.compare import detect_pair  # noqa: E402
from mri_safety.change.masks import img_like  # noqa: E402
from mri_safety.evaluation.pairs import DATA, Pair, load_positions_pair  # noqa: E402
from mri_safety.evaluation.scoring import score_pair  # noqa: E402
from mri_safety.evaluation.subtraction import subtraction  # noqa: E402

warnings.filterwarnings("ignore")
MS = DATA / "longitudinal-ms"


def _to_common(labels: np.ndarray, like: sitk.Image, grid: sitk.Image,
               t: sitk.Transform) -> np.ndarray:
    im = img_like(labels.astype(np.int32), like)
    out = sitk.Resample(im, grid, t, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def ms_pair(p: str) -> dict[str, Any]:
    d = MS / p
    b = sitk.ReadImage(str(d / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
    f = sitk.ReadImage(str(d / "study2_FLAIR.nii.gz"), sitk.sitkFloat32)
    grid = sitk.ReadImage(str(d / "brainmask_common_space.nii.gz"))
    t1 = sitk.ReadTransform(str(d / "study1_FLAIR_to_common_space.txt"))
    gt = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "gt.nii.gz"))), (2, 1, 0))
    t0 = time.perf_counter()
    res = detect_pair(b, f, contrast="flair")
    secs = time.perf_counter() - t0
    # candidate-level score map in common space: each candidate voxel carries its evidence
    ev = np.zeros(len(res.candidates) + 1, np.float32)
    rep = np.zeros(len(res.candidates) + 1, bool)
    for c in res.candidates:
        ev[c["id"]] = c["evidence_z"]
        rep[c["id"]] = c["sign"] > 0
    lab_c = _to_common(res.labels, b, grid, t1)
    flagged_ids = [c["id"] for c in res.candidates if c["flagged"]]
    at_review = score_pair(np.where(np.isin(lab_c, flagged_ids), lab_c, 0), gt)
    thr = np.round(np.arange(3.0, 12.01, 0.5), 2)

    def froc(lab: np.ndarray, scores: np.ndarray) -> list[tuple[float, float, float]]:
        pts: list[tuple[float, float, float]] = []
        for t in thr:
            keep = np.flatnonzero(scores >= t)
            s = score_pair(np.where(np.isin(lab, keep[keep > 0]), lab, 0), gt)
            pts.append((float(t), float(s.n_false_positives), s.sensitivity))
        return pts

    ours = froc(lab_c, np.where(rep, ev, 0.0))
    ours_both = froc(lab_c, ev)
    # plain subtraction baseline on the same raw pair (its own registration)
    t0 = time.perf_counter()
    sub = subtraction(Pair(f"ms-{p}", b, f, None), z_thr=3.0, min_voxels=3)
    sub_secs = time.perf_counter() - t0
    sub_c = _to_common(sub.candidates, b, grid, t1)
    base_pts = froc(sub_c, sub.scores)
    return {"patient": p, "review": at_review, "froc": ours, "froc_both": ours_both,
            "sub": base_pts, "seconds": secs, "sub_seconds": sub_secs,
            "z_review": res.parameters["z_review"], "reg": res.registration,
            "noise": res.parameters["noise_model"],
            "res": res.parameters["resolution"]["effective_resolution_mm"]}


def fp_at(pts: list[tuple[float, float, float]], sens: float) -> float:
    """Fewest false positives at which sensitivity >= sens (inf if never reached)."""
    ok = [fp for _, fp, s in pts if s >= sens - 1e-9]
    return float(min(ok)) if ok else float("inf")


def positions() -> tuple[list[tuple[str, int, int, float, str]], float]:
    rows = []
    for a, b in itertools.combinations(["HFS", "HFP", "HFDL", "HFDR"], 2):
        pr = load_positions_pair(a, b)
        t0 = time.perf_counter()
        res = detect_pair(pr.fixed, pr.moving, contrast="t1w")
        secs = time.perf_counter() - t0
        n_fl = sum(1 for c in res.candidates if c["flagged"])
        sub = subtraction(pr, z_thr=5.0, min_voxels=10)
        rows.append((f"{a}-{b}", n_fl, int(sub.candidates.max()), secs,
                     res.registration["status"]))
    return rows, float(np.mean([r[3] for r in rows]))


def synthetic(study: Path) -> str:
    from mri_safety.evaluation.pairs import load_synth_pair, synth_visits

    lines = ["| pair | truth lesions | found | flagged FP | s |", "|---|---|---|---|---|"]
    tot = [0, 0, 0]
    for pat, visit, _ in synth_visits(study):
        pr = load_synth_pair(study, pat, visit, "FLAIR")
        t0 = time.perf_counter()
        res = detect_pair(pr.fixed, pr.moving, contrast="flair")
        secs = time.perf_counter() - t0
        ids = [c["id"] for c in res.candidates if c["flagged"]]
        assert pr.truth is not None
        s = score_pair(np.where(np.isin(res.labels, ids), res.labels, 0), pr.truth)
        tot[0] += s.n_lesions
        tot[1] += s.n_found
        tot[2] += s.n_false_positives
        lines.append(f"| {pat} {visit} | {s.n_lesions} | {s.n_found} | {s.n_false_positives} "
                     f"| {secs:.0f} |")
    lines.append(f"| total | {tot[0]} | {tot[1]} | {tot[2]} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synth", type=Path, default=None)
    ap.add_argument("--skip-positions", action="store_true")
    a = ap.parse_args()
    out: list[str] = []
    ms = [ms_pair(p) for p in ("patient01", "patient03")]
    out.append("### Real MS follow-ups (longitudinal-ms, FLAIR study1 -> study2)\n")
    out.append("At the review threshold (fixed before scoring; z_review from the noise model):\n")
    out.append("| pair | expert lesions | found | sensitivity | flagged FP | z_review | "
               "registration | noise s0 / delta mm | effective resolution mm | s/pair |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    n_les = n_found = n_fp = 0
    for r in ms:
        s = r["review"]
        n_les += s.n_lesions
        n_found += s.n_found
        n_fp += s.n_false_positives
        out.append(f"| {r['patient']} | {s.n_lesions} | {s.n_found} | {s.sensitivity:.2f} | "
                   f"{s.n_false_positives} | {r['z_review']:.2f} | {r['reg']['status']} "
                   f"(NCC {r['reg']['ncc_brain']:.2f}) | {r['noise']['s0']:.3f} / "
                   f"{r['noise']['delta_mm']:.2f} | {r['res']} | {r['seconds']:.0f} |")
    out.append(f"| both | {n_les} | {n_found} | {n_found / max(n_les, 1):.2f} | "
               f"{n_fp / 2:.1f} per pair | | | | | |\n")
    out.append("FROC (pooled over both pairs; FP per pair; ours = new-hyperintensity candidates "
               "ranked by evidence z; ours both signs = also signal decreases, which the "
               "expert change masks include; plain = evaluation.subtraction, z > 3, >= 3 "
               "voxels, ranked by peak z):\n")
    out.append("| threshold z | ours sens | ours FP/pair | ours both signs sens | FP/pair | "
               "plain sens | plain FP/pair |")
    out.append("|---|---|---|---|---|---|---|")
    pooled: dict[str, list[tuple[float, float, float]]] = {}
    for key in ("froc", "froc_both", "sub"):
        pts = []
        for i in range(len(ms[0][key])):
            t = ms[0][key][i][0]
            fp = sum(r[key][i][1] for r in ms) / 2
            found = sum(r[key][i][2] * r["review"].n_lesions for r in ms)
            pts.append((t, fp, found / max(n_les, 1)))
        pooled[key] = pts
    for i in range(len(pooled["froc"])):
        o, ob, sb = pooled["froc"][i], pooled["froc_both"][i], pooled["sub"][i]
        out.append(f"| {o[0]:.1f} | {o[2]:.2f} | {o[1]:.1f} | {ob[2]:.2f} | {ob[1]:.1f} | "
                   f"{sb[2]:.2f} | {sb[1]:.1f} |")
    out.append("\nFewest FP per pair reaching a sensitivity (inf = never reached):\n")
    out.append("| sensitivity | ours | ours both signs | plain subtraction |")
    out.append("|---|---|---|---|")
    for sv in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7):
        out.append(f"| {sv:.1f} | {fp_at(pooled['froc'], sv):g} | "
                   f"{fp_at(pooled['froc_both'], sv):g} | "
                   f"{fp_at(pooled['sub'], sv):g} |")
    out.append(f"\nTime per MS pair: ours {np.mean([r['seconds'] for r in ms]):.0f} s, plain "
               f"subtraction {np.mean([r['sub_seconds'] for r in ms]):.0f} s (2 shared cores).\n")
    if not a.skip_positions:
        rows, mean_s = positions()
        out.append("### Real no-change pairs (patient-positions, 2D sagittal T1, --contrast t1w)\n")
        out.append("| pair | flagged (ours) | plain subtraction candidates | registration | s |")
        out.append("|---|---|---|---|---|")
        for name, n_fl, n_sub, secs, st in rows:
            out.append(f"| {name} | {n_fl} | {n_sub} | {st} | {secs:.0f} |")
        out.append(f"\nBar: <= 1 flagged per pair; max here {max(r[1] for r in rows)}. "
                   f"Mean time {mean_s:.0f} s per pair.\n")
    if a.synth is not None and a.synth.exists():
        out.append("### Synthetic FLAIR pairs (mri_safety.synth, preset small)\n")
        out.append(synthetic(a.synth))
    body = "\n".join(out)
    print(body)
    write_section("Detection (issue 5)", body)


if __name__ == "__main__":
    main()
