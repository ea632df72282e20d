"""New fluid where there was tissue (a cyst) on synthetic pairs (issue 5).

Usage::

    python benchmarks/detect_fluid.py [--seeds 1 2 3 4] [--cysts 6] [--no-write]

A new cyst (fluid replacing tissue: a cavity, necrosis, a cystic part of a
mass) is bright on T2w and dark on FLAIR, whose inversion nulls free fluid.
The pipeline pools each T2w comparison with the FLAIR comparison of the same
visits (``mri_safety.change.zmap.combine_z``), and there the two changes
cancel; since 2026-12-06 a T2w comparison with its FLAIR pair also searches
the fluid map ``(z_T2w - z_FLAIR) / sqrt(2 - 2 rho)`` where FLAIR turned
fluid-dark (``mri_safety.change.fluid``).

Each seed builds one subject from the generator's own parts, as
``benchmarks/detect_small.py`` does (1 mm anatomy, slice-profile sampling,
bias, Rician noise, new pose and FOV at follow-up), with ``--cysts`` new
cysts in the follow-up: irregular blobs of 3-12 mm nominal diameter in brain
tissue, at white-matter, periventricular and deep grey sites in turn, at least
25 mm apart, whose fraction takes the CSF value of every contrast
(``synth.contrast.TISSUE_MEANS``; T1w not acquired here). Both protocols of
``detect_small.py`` (clinical 1 x 1 x 3-4 mm, coarse 2 x 2 x 3-4 mm).

Comparisons (``detect_pair``, what the pipeline runs): T2w pooled with the
FLAIR pair (``T2w + FLAIR``), FLAIR pooled with the T2w pair (``FLAIR +
T2w``), T2w alone (a single series' view, for reference) and FLAIR alone
(a visit with FLAIR but no T2w, as in the demo's T1w + FLAIR protocol: there
the cyst can only show as a new FLAIR-hypointense focus,
``compare.new_dark_focus``). A cyst is found
when a flagged candidate has a voxel within (radius + the largest baseline
voxel side) of its true centre; every other flagged candidate is a false
positive. Per cyst the largest |z| of the pooled map (``zmap.nii.gz``) and of
the fluid map there show the cancellation. Writes the section "New fluid
(cysts) on synthetic pairs (issue 5)" of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402
from detect_small import PROTOCOLS, SmallPair, acquire_pair, place  # noqa: E402
from detect_synth import _bin as _size_bin  # noqa: E402

from mri_safety.change.compare import detect_pair  # noqa: E402
from mri_safety.register.transforms import sitk_affine_ras  # noqa: E402
from mri_safety.synth.anatomy import CSF, Anatomy, get_anatomy  # noqa: E402
from mri_safety.synth.contrast import TISSUE_MEANS, Component  # noqa: E402

warnings.filterwarnings("ignore")

#: comparison -> (series, contrast, pooled partner (series, contrast) or None)
COMPARISONS = {"T2w + FLAIR": ("T2w", "t2w", ("FLAIR", "flair")),
               "FLAIR + T2w": ("FLAIR", "flair", ("T2w", "t2w")),
               "T2w alone": ("T2w", "t2w", None),
               "FLAIR alone": ("FLAIR", "flair", None)}
SIZE_BINS = ((3.0, 5.0), (5.0, 10.0), (10.0, np.inf))
SITES = ("wm", "periventricular", "deep")


@dataclass
class Cyst:
    """One inserted cyst in one protocol's comparison."""

    protocol: str
    comparison: str
    site: str
    size_mm: float
    found: bool
    flagged_as: str  # type of the flagged candidate on it ("" when missed)
    pooled_z: float  # largest |z| of zmap.nii.gz within radius + one voxel
    fluid_z: float  # ... of zmap_fluid (nan when the comparison has none)
    why: str  # a missed one: the reasons of the best candidate there, or "no candidate"


def make_pair(anat: Anatomy, seed: int, n: int) -> SmallPair:
    """Baseline and follow-up of one subject (cysts at follow-up), both protocols."""
    rng = np.random.default_rng([20261206, seed])
    abns = place(anat, rng, [("cyst", SITES[k % len(SITES)]) for k in range(n)], (3.0, 12.0))
    csf = {kind: float(TISSUE_MEANS[kind][CSF]) for kind in ("FLAIR", "T2w", "T2starw")}
    return acquire_pair(anat, abns, [Component(f, csf) for *_, f in abns], rng, 20261206, seed)


def evaluate(sp: SmallPair) -> tuple[list[Cyst], list[tuple[str, str, int, float]]]:
    """Every protocol and comparison: each cyst found or not; per comparison
    (protocol, comparison, flagged false positives, seconds)."""
    cysts: list[Cyst] = []
    pairs: list[tuple[str, str, int, float]] = []
    for proto, imgs in sp.images.items():
        for name, (series, contrast, partner) in COMPARISONS.items():
            extra = ([(imgs[0][partner[0]], imgs[1][partner[0]], partner[1])] if partner
                     else None)
            t0 = time.perf_counter()
            res = detect_pair(imgs[0][series], imgs[1][series], contrast=contrast, extra=extra)
            secs = time.perf_counter() - t0
            aff = sitk_affine_ras(res.baseline)
            tol = float(max(res.baseline.GetSpacing()))
            grid = np.indices(res.labels.shape, dtype=np.float32).reshape(3, -1)
            world = (aff[:3, :3] @ grid + aff[:3, 3:4]).T
            truth = [((sp.poses[0] @ np.append(c, 1))[:3], d, site)
                     for _, site, c, d, _ in sp.abns]
            zones = [np.linalg.norm(world - c, axis=1) <= d / 2 + tol for c, d, _ in truth]
            lab = res.labels.ravel()
            hit: dict[int, str] = {}
            best: dict[int, tuple[float, str]] = {}
            fp = 0
            for cd in res.candidates:
                near = [i for i, zn in enumerate(zones) if np.any(zn & (lab == cd["id"]))]
                for i in near:
                    if cd["evidence_z"] > best.get(i, (-np.inf, ""))[0]:
                        best[i] = (cd["evidence_z"], f"{cd['type']}: " + "; ".join(cd["reasons"]))
                    if cd["flagged"]:
                        hit.setdefault(i, cd["type"])
                fp += bool(cd["flagged"] and not near)
            zp = np.abs(res.z).ravel()
            fz = res.maps.get("zmap_fluid")
            for i, (_, d, site) in enumerate(truth):
                cysts.append(Cyst(proto, name, site, d, i in hit, hit.get(i, ""),
                                  float(zp[zones[i]].max()),
                                  float(fz.ravel()[zones[i]].max()) if fz is not None
                                  else float("nan"),
                                  best.get(i, (0.0, "no candidate"))[1]))
            pairs.append((proto, name, fp, secs))
    return cysts, pairs


def table(cysts: list[Cyst], pairs: list[tuple[str, str, int, float]], cmd: str) -> str:
    lines = [cmd, "", "| protocol | comparison | size | found | as | median max pooled |z| "
             "| median max fluid z |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list[Cyst]] = defaultdict(list)
    for c in cysts:
        groups[(c.protocol, c.comparison, _size_bin(c.size_mm, SIZE_BINS))].append(c)
    for proto in PROTOCOLS:
        for name in COMPARISONS:
            for b in [_size_bin(lo, SIZE_BINS) for lo, _ in SIZE_BINS]:
                g = groups.get((proto, name, b), [])
                if not g:
                    continue
                kinds = sorted({c.flagged_as for c in g if c.found})
                fz = [c.fluid_z for c in g if not np.isnan(c.fluid_z)]
                lines.append(
                    f"| {proto} | {name} | {b} | {sum(c.found for c in g)} of {len(g)} | "
                    f"{', '.join(kinds) or '-'} | {np.median([c.pooled_z for c in g]):.1f} | "
                    f"{np.median(fz) if fz else float('nan'):.1f} |")
    lines += ["", "| protocol | comparison | pairs | flagged false positives | s per pair |",
              "|---|---|---|---|---|"]
    for proto in PROTOCOLS:
        for name in COMPARISONS:
            q = [r for r in pairs if r[0] == proto and r[1] == name]
            lines.append(f"| {proto} | {name} | {len(q)} | {sum(r[2] for r in q)} | "
                         f"{np.mean([r[3] for r in q]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--cysts", type=int, default=6)
    ap.add_argument("--no-write", dest="write", action="store_false")
    a = ap.parse_args()
    anat = get_anatomy(1.0)
    cysts: list[Cyst] = []
    pairs: list[tuple[str, str, int, float]] = []
    for s in a.seeds:
        cs, qs = evaluate(make_pair(anat, s, a.cysts))
        cysts += cs
        pairs += qs
        print(f"seed {s} done", flush=True)
    cmd = (f"`python benchmarks/detect_fluid.py` (seeds {', '.join(map(str, a.seeds))}; per "
           f"seed one pair per protocol with {a.cysts} new cysts of 3-12 mm nominal diameter "
           "at white-matter, periventricular and deep grey sites, CSF-valued on every "
           "contrast; size = equivalent diameter in brain tissue; found = a flagged "
           "candidate within radius + one voxel side of the true centre; 2 cores shared):")
    body = table(cysts, pairs, cmd)
    print(body)
    for c in cysts:
        if not c.found and c.comparison in ("T2w + FLAIR", "FLAIR alone"):
            print(f"missed: {c.protocol} {c.comparison} {c.site} {c.size_mm:.1f} mm, pooled |z| "
                  f"{c.pooled_z:.1f}, fluid z {c.fluid_z:.1f}: {c.why}")
    if a.write:
        write_section("New fluid (cysts) on synthetic pairs (issue 5)", body)


if __name__ == "__main__":
    main()
