"""Benchmark: plain subtraction baseline on real and synthetic pairs, scored by the harness.

Usage::

    python benchmarks/synth_eval.py [--preset small|full] [--patients N] [--seed S] [--out DIR]

Prints lesion-wise results (sensitivity by size, FP per pair, F1) for the real
longitudinal-ms pairs, the real patient-positions no-change pairs and the
synthetic follow-ups, the realism statistic (robust spread of the registered
difference relative to tissue intensity) on no-change pairs, and a FROC table
over the z threshold. Writes ``results.json`` into the output directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from mri_safety.evaluation.pairs import (
        load_ms_pair,
        load_positions_pair,
        load_synth_pair,
        synth_visits,
    )
    from mri_safety.evaluation.scoring import LesionScore, froc, score_pair
    from mri_safety.evaluation.subtraction import subtraction
    from mri_safety.synth import synth_main

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--study", type=Path, default=None, help="reuse a generated study")
    ap.add_argument("--pictures", action="store_true", help="write abnormality PNGs")
    ap.add_argument("--no-write", dest="write", action="store_false",
                    help="do not update benchmarks/results.md")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp(prefix="synth_eval_"))
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, object] = {}
    t0 = time.time()
    study = a.study or synth_main(out / "study", a.patients, a.seed, a.preset)
    res["generate_s"] = time.time() - t0

    ms: LesionScore | None = None
    thr = np.arange(3.0, 10.5, 0.5)
    froc_ms = np.zeros((len(thr), 2))
    for p in ("patient01", "patient03"):
        pair = load_ms_pair(p)
        r = subtraction(pair)
        s = score_pair(r.candidates, pair.truth, float(np.prod(pair.fixed.GetSpacing())))
        ms = s if ms is None else ms + s
        pts = froc(r.z, pair.truth, thr, min_candidate_voxels=10)
        froc_ms += np.array([[fp, se * s.n_lesions] for _, fp, se in pts])
    assert ms is not None
    res["ms_real"] = ms.as_dict()
    res["ms_froc"] = [(float(t), fp / 2, found / ms.n_lesions)
                      for t, (fp, found) in zip(thr, froc_ms, strict=True)]
    pos = {}
    for b in ("HFP", "HFDL", "HFDR"):
        r = subtraction(load_positions_pair("HFS", b))
        pos[f"HFS-{b}"] = {"candidates": int(r.candidates.max()), "diff_spread": r.diff_spread}
    res["positions_real"] = pos
    syn: LesionScore | None = None
    nochange = []
    for pid, visit, ids in synth_visits(Path(study)):
        pair = load_synth_pair(Path(study), pid, visit, "FLAIR")
        r = subtraction(pair)
        if not ids:
            t1 = subtraction(load_synth_pair(Path(study), pid, visit, "T1w"))
            nochange.append({"pair": f"{pid}-{visit}", "flair_candidates": int(r.candidates.max()),
                             "t1w_diff_spread": t1.diff_spread})
            continue
        s = score_pair(r.candidates, pair.truth, float(np.prod(pair.fixed.GetSpacing())))
        syn = s if syn is None else syn + s
    res["synthetic_flair"] = syn.as_dict() if syn else None
    res["synthetic_no_change"] = nochange
    res["total_s"] = time.time() - t0
    if a.pictures:
        from mri_safety.synth.pictures import write_pictures

        res["pictures"] = [str(x) for x in write_pictures(Path(study), out / "pictures")]
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    body = _tables(res, a)
    print(body)
    if a.write:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_section

        write_section("Ground truth: plain subtraction on real and synthetic pairs", body)


def _score_rows(name: str, d: dict[str, object]) -> str:
    by = d["sensitivity_by_size_mm"]
    assert isinstance(by, dict)
    sizes = "; ".join(f"{k} mm: {v[0]:.2f} of {v[1]}" if v[0] is not None else f"{k} mm: -"
                      for k, v in by.items())
    return (f"| {name} | {d['lesions']} | {d['found']} | {d['sensitivity']:.2f} | "
            f"{d['fp_per_pair']:.1f} | {d['f1']:.2f} | {sizes} |")


def _tables(res: dict[str, object], a: argparse.Namespace) -> str:
    """Markdown tables of one run (the benchmarks/results.md section body)."""
    ms, syn = res["ms_real"], res["synthetic_flair"]
    assert isinstance(ms, dict)
    lines = [
        f"`python benchmarks/synth_eval.py --preset {a.preset} --patients {a.patients} "
        f"--seed {a.seed}`: the plain subtraction baseline (`mri_safety.evaluation.subtraction`:"
        " rigid + N4 + mean/SD match + robust z > 5, >= 10 voxels) scored by the harness "
        "(`mri_safety.evaluation.scoring`: expert lesions = 26-connected components >= 3 voxels,"
        " found = touched within one voxel). "
        + ("Study given (`--study`, generated beforehand with the same arguments); "
           if a.study else f"Generation {float(res['generate_s']):.0f} s, ")
        + f"whole run {float(res['total_s']):.0f} s.",
        "",
        "| pairs | lesions | found | sensitivity | FP per pair | F1 | sensitivity by diameter |",
        "|---|---|---|---|---|---|---|",
        _score_rows("real MS FLAIR (patient01 + patient03)", ms),
    ]
    if isinstance(syn, dict):
        lines.append(_score_rows("synthetic FLAIR follow-ups with new abnormalities", syn))
    lines += ["", "Realism: robust SD of the registered difference / median tissue intensity "
              "on no-change pairs (T1w), and plain-subtraction candidates on them:", "",
              "| pair | kind | diff spread | candidates |", "|---|---|---|---|"]
    pos = res["positions_real"]
    assert isinstance(pos, dict)
    for k, v in pos.items():
        lines.append(f"| {k} | real (patient-positions) | {v['diff_spread']:.4f} | "
                     f"{v['candidates']} |")
    nc = res["synthetic_no_change"]
    assert isinstance(nc, list)
    for v in nc:
        lines.append(f"| {v['pair']} | synthetic (atrophy only) | {v['t1w_diff_spread']:.4f} | "
                     f"{v['flair_candidates']} (FLAIR) |")
    lines += ["", "FROC of the plain subtraction on the real MS pairs (candidates >= 10 voxels):",
              "", "| z | FP per pair | sensitivity |", "|---|---|---|"]
    froc_rows = res["ms_froc"]
    assert isinstance(froc_rows, list)
    lines += [f"| {t:.1f} | {fp:.1f} | {se:.2f} |" for t, fp, se in froc_rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
