"""Benchmark: `mri-safety compare` on a high-resolution 3D T1 pair (0.7 mm, 40 M voxels).

Trials scan 3D T1 (MPRAGE-like) at 0.7-1 mm; this is the largest input a
comparison gets. The pairs (``mri_safety.evaluation.pairs.load_highres_t1_pair``)
are built from the real 3D T1 of ../shared/data/dicom/brain-t1-3d (its dcm2niix
reference NIfTI, 274 x 384 x 384 at 0.70 x 0.67 x 0.67 mm):

* ``no change``: baseline = the scan; follow-up = the same head moved by a known
  rigid transform (7/-4/3 deg, 10/-6/4 mm, B-spline), times a smooth bias field,
  with Rician noise of 3 % (``mri_safety.register.simulate.known_motion``, seed
  1234). Nothing changed, so every flagged candidate is a false positive (issue 5
  bar for no-change pairs: <= 1).
* ``6 mm focus``: the same, with a 6 mm sphere at 0.6 x its surroundings put in
  deep white matter before the motion (a T1-dark focus: new lesion or infarct);
  found when a flagged candidate's centroid lies within 4 mm of it.
* ``8 foci``: the same with eight 5 mm spheres at 0.7 x in white matter (seeded
  positions >= 25 mm apart), the T1-dark lesions that the T1w rule must see
  where white matter is (method step 6, docs/detection.md).

Each comparison runs ``mri-safety compare ... --contrast t1w`` in its own child
process: wall time and peak RSS from ``os.wait4``. Anchor in the same run: the
ANTs rigid registration alone of the same pair with antspyx defaults
(``ants.registration(type_of_transform="Rigid")``), also in a child process.

Usage: ``python benchmarks/detect_3d.py [--root CHECKOUT ...] [--no-write]``;
``--root`` (repeatable) runs the comparisons with those checkouts' code, so a
change can be measured against the code before it in the same run (rows carry
the commit). Writes the "Detection on a 0.7 mm 3D T1 pair" section of
``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _results import write_section  # noqa: E402

TITLE = "Detection on a 0.7 mm 3D T1 pair"
FOCUS_MM = 6.0
#: several smaller T1-dark foci in white matter (seeded positions >= 25 mm apart)
N_FOCI, FOCI_MM, FOCI_GAIN = 8, 5.0, 0.7


def make_pairs(out: Path) -> list[list[float]]:
    """Write baseline.nii.gz, fu_nochange.nii.gz, fu_focus.nii.gz and fu_foci.nii.gz
    (:func:`mri_safety.evaluation.pairs.load_highres_t1_pair`); return the centres
    (world RAS mm) of the focus, then of the foci."""
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.evaluation.pairs import load_highres_t1_pair

    plain = load_highres_t1_pair()
    sitk.WriteImage(plain.fixed, str(out / "baseline.nii.gz"))
    sitk.WriteImage(plain.moving, str(out / "fu_nochange.nii.gz"))
    centres = []
    for name, pair in (("focus", load_highres_t1_pair(focus_mm=FOCUS_MM)),
                       ("foci", load_highres_t1_pair(focus_mm=FOCI_MM, gain=FOCI_GAIN,
                                                     n_foci=N_FOCI))):
        sitk.WriteImage(pair.moving, str(out / f"fu_{name}.nii.gz"))
        assert pair.truth is not None
        for lab in range(1, int(pair.truth.max()) + 1):
            ijk = np.argwhere(pair.truth == lab).mean(axis=0)
            lps = pair.fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
            centres.append([-lps[0], -lps[1], lps[2]])
    return centres


def child(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
          ) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process; raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


ANTS_RIGID = """
import ants, sys
f = ants.image_read(sys.argv[1]); m = ants.image_read(sys.argv[2])
ants.registration(f, m, type_of_transform="Rigid")
"""


def code_label(root: Path) -> str:
    """Short commit of the checkout at ``root`` (+ "dirty" with uncommitted changes)."""
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                            "mri_safety"], capture_output=True, text=True).stdout.strip()
    return rev + (" + uncommitted" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, action="append", default=None,
                    help="checkout whose code compares (repeatable; default: this one)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--make-pairs", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_pairs is not None:
        print(json.dumps(list(make_pairs(args.make_pairs))))
        return
    roots = [r.resolve() for r in (args.root or [REPO])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the pairs are built in a child process: Linux carries a process's RSS
        # high-water mark over fork, so a parent holding the 40 M-voxel images would
        # set the floor of every child's measured peak
        out = subprocess.run([sys.executable, __file__, "--make-pairs", str(work)], check=True,
                             capture_output=True, text=True).stdout
        centres = json.loads(out.strip().splitlines()[-1])
        truth = {"focus": centres[:1], "foci": centres[1:]}
        base = work / "baseline.nii.gz"
        ants_env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="2")
        wall_a, rss_a = child([sys.executable, "-c", ANTS_RIGID, str(base),
                               str(work / "fu_nochange.nii.gz")], ants_env)
        for root in roots:
            env = dict(os.environ, PYTHONPATH=str(root))
            for name in ("nochange", "focus", "foci"):
                out = work / f"out_{name}"
                cmd = [sys.executable, "-m", "mri_safety.cli", "compare", str(base),
                       str(work / f"fu_{name}.nii.gz"), "--out", str(out), "--contrast", "t1w",
                       "--threads", "2"]
                wall, rss = child(cmd, env, cwd=root)  # -m puts the cwd first on sys.path
                doc = json.loads((out / "candidates.json").read_text())
                flagged = [c for c in doc["candidates"] if c["flagged"]]
                pts = truth.get(name, [])

                def dist(c: dict, q: list[float]) -> float:
                    return float(sum((a - b) ** 2 for a, b in
                                     zip(c["centroid_ras_mm"], q, strict=True)) ** 0.5)
                hits = sum(any(dist(c, q) <= 4.0 for c in flagged) for q in pts)
                fp = sum(all(dist(c, q) > 4.0 for q in pts) for c in flagged)
                grid = doc["parameters"].get("analysis_grid", {}).get("spacing_mm")
                rows.append((code_label(root), "native" if grid is None else "1 mm", name, wall,
                             rss, len(doc["candidates"]), len(flagged), fp,
                             "-" if not pts else f"{hits} of {len(pts)}"))
                print(rows[-1], flush=True)
    lines = [
        f"Pair: the real 3D T1 of brain-t1-3d (274 x 384 x 384, 0.70 x 0.67 x 0.67 mm) "
        f"and itself moved (7/-4/3 deg, 10/-6/4 mm), bias field, 3 % Rician noise; "
        f"`focus`: the same with a {FOCUS_MM:g} mm sphere at 0.6 x in deep white matter "
        f"at RAS ({centres[0][0]:.1f}, {centres[0][1]:.1f}, {centres[0][2]:.1f}) mm; "
        f"`foci`: {N_FOCI} spheres of {FOCI_MM:g} mm at {FOCI_GAIN:g} x in white matter "
        f"(seeded, >= 25 mm apart). Found: a flagged candidate's centroid within 4 mm of "
        f"a sphere's centre; false positive: one within 4 mm of none. `mri-safety compare "
        f"--contrast t1w --threads 2`, each in its own process.",
        "",
        "| code | analysis grid | follow-up | wall (s) | peak RSS (MiB) | candidates | flagged "
        "| flagged false positives (bar <= 1) | foci found | wall / ANTs rigid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for code, grid, name, wall, rss, n, nf, fp, hit in rows:
        lines.append(f"| {code} | {grid} | {name} | {wall:.0f} | {rss:.0f} | {n} | {nf} | {fp} "
                     f"| {hit} | {wall / wall_a:.2f} |")
    lines += ["", f"Anchor: antspyx `ants.registration(type_of_transform=\"Rigid\")` "
              f"(defaults, 2 ITK threads) of the no-change pair alone: {wall_a:.0f} s, peak RSS "
              f"{rss_a:.0f} MiB."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
