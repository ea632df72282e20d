"""Small new lesions and microbleeds on synthetic pairs: sensitivity by size (issue 5).

Usage::

    python benchmarks/detect_small.py [--seeds 1 2 3 4] [--lesions 8] [--bleeds 4] [--no-write]

The whole-trial benchmark (``benchmarks/detect_synth.py``) draws few lesions
under 5 mm (2-6 per three seeds), too few to measure the 3-5 mm bar. Here
each seed builds one pair from the generator's own parts
(``mri_safety.synth``: the 1 mm anatomy, its lesion and haemorrhage
appearance ``synth.abnormal.VALUES``, slice-profile sampling, bias field,
Rician noise, a new head pose and a new FOV/tilt at follow-up) with many
small new abnormalities in the follow-up:

- ``--lesions`` white-matter / periventricular / cortical lesions (bright on
  FLAIR and T2w), ``--bleeds`` deep microbleeds (dark on T2*w, also on T2w and
  FLAIR), nominal diameters uniform in 2-6 mm, at least 25 mm apart;
- acquired with two protocols: ``clinical`` = the generator's full preset
  (FLAIR 1 x 1 mm in-plane, 4 mm slices at baseline and 3 mm at follow-up;
  T2w and T2*w 1 x 1 x 3 mm) and ``coarse`` = its small preset (2 x 2 mm
  in-plane, FLAIR 4 -> 3 mm, T2w and T2*w 4 mm).

Detection is what the pipeline runs: FLAIR pooled with the T2w pair of the
same visits (``detect_pair(..., extra=[T2w])``) and T2*w alone. A lesion is
found when a flagged candidate of the FLAIR comparison has a voxel centre
within (radius + the largest baseline voxel side) of its true centre (the
centre mapped into the baseline's scanner space with the true poses); a
microbleed likewise by the T2*w comparison; every other flagged candidate of
a comparison is a false positive, unless it lies on another inserted
abnormality (a microbleed is dark on FLAIR and T2w as well). Size =
equivalent-sphere diameter of the lesion's fraction map after restriction to
brain tissue. Writes the section
"Small lesions on synthetic pairs (issue 5)" of benchmarks/results.md.
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
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import add_param_overrides, params_from, write_section  # noqa: E402
from detect_synth import _bin as _size_bin  # noqa: E402

from mri_safety.change.compare import detect_pair  # noqa: E402
from mri_safety.change.params import DetectParams  # noqa: E402
from mri_safety.register.transforms import sitk_affine_ras  # noqa: E402
from mri_safety.synth import abnormal as ab  # noqa: E402
from mri_safety.synth.acquire import (  # noqa: E402
    AcqSpec,
    degrade,
    grid_affine,
    random_pose,
    sample,
)
from mri_safety.synth.anatomy import GM, WM, Anatomy, get_anatomy  # noqa: E402
from mri_safety.synth.contrast import Component, render  # noqa: E402
from mri_safety.synth.sitkutil import array_to_sitk  # noqa: E402
from mri_safety.synth.study import PRESETS, REF, SNR, _quantise, _series_specs  # noqa: E402

warnings.filterwarnings("ignore")

PROTOCOLS = {"clinical": "full", "coarse": "small"}
KINDS = ("FLAIR", "T2w", "T2starw")
#: detection parameters of this run (``--set``); None = configs/detection.yaml
PARAMS: DetectParams | None = None
#: abnormality -> (series, compare contrast, pooled partner series and contrast)
COMPARISONS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "lesion": ("FLAIR", "flair", ("T2w", "t2w")), "haemorrhage": ("T2starw", "t2starw", None)}
SIZE_BINS = ((2.0, 3.0), (3.0, 5.0), (5.0, np.inf))
MIN_SEPARATION_MM = 25.0


@dataclass
class Truth:
    """One inserted abnormality in one protocol's comparison."""

    protocol: str
    kind: str
    site: str
    size_mm: float
    found: bool
    peak_z: float  # largest |z| of the comparison's z-map within radius + one voxel
    why: str  # a missed one: the reasons of the best candidate there, or "no candidate"


@dataclass
class Pair:
    """One comparison: flagged false positives and its detection time."""

    protocol: str
    kind: str
    fp: int
    seconds: float


def place(anat: Anatomy, rng: np.random.Generator, wanted: list[tuple[str, str]],
          size_mm: tuple[float, float] = (2.0, 6.0)
          ) -> list[tuple[str, str, np.ndarray, float, np.ndarray]]:
    """(kind, site, centre RAS mm, equivalent diameter mm, fraction map) per ``wanted``
    (kind, site): nominal diameter uniform in ``size_mm``, at least
    :data:`MIN_SEPARATION_MM` apart, restricted to brain tissue."""
    out: list[tuple[str, str, np.ndarray, float, np.ndarray]] = []
    tissue = np.clip(anat.probs[GM] + anat.probs[WM], 0, 1)
    for kind, site in wanted:
        for _ in range(200):
            d = float(rng.uniform(*size_mm))
            c = ab.pick_site(anat, site, rng, d if site == "periventricular" else d / 2)
            if all(np.linalg.norm(c - o[2]) >= MIN_SEPARATION_MM for o in out):
                break
        else:
            raise RuntimeError(f"no room for a {kind} at {site}")
        f = ab.blob_fraction(anat, c, d, int(rng.integers(1 << 30))) * tissue
        d_eq = float(np.cbrt(6.0 * f.sum() * anat.voxel_mm**3 / np.pi))
        out.append((kind, site, c, d_eq, f))
    return out


def _acquire(anat: Anatomy, comps: list[Component], pose: np.ndarray, centre_scan: np.ndarray,
             specs: dict[str, AcqSpec], seed: list[int], gain: float) -> dict[str, sitk.Image]:
    out = {}
    for n, kind in enumerate(KINDS):
        spec = specs[kind]
        grid, shape = grid_affine(spec, centre_scan)
        clean = sample(render(anat, anat.probs, anat.texture, kind, comps), anat.affine, pose,
                       spec, grid, shape)
        img = degrade(clean, grid, np.random.default_rng(seed + [n]), SNR[kind], REF[kind], gain)
        out[kind] = array_to_sitk(_quantise(img).astype(np.float32), grid)
    return out


@dataclass
class SmallPair:
    """A seed's subject: its new abnormalities, the true poses and both visits' images."""

    abns: list[tuple[str, str, np.ndarray, float, np.ndarray]]
    poses: list[np.ndarray]  # subject -> scanner RAS of baseline and follow-up
    images: dict[str, list[dict[str, sitk.Image]]]  # protocol -> [baseline, follow-up]


def make_pair(anat: Anatomy, seed: int, n_les: int, n_bleed: int) -> SmallPair:
    """Baseline and follow-up of one subject, acquired with every protocol."""
    rng = np.random.default_rng([20261202, seed])
    sites = ["wm", "periventricular", "gm"]
    abns = place(anat, rng, [("lesion", sites[k % 3]) for k in range(n_les)]
                 + [("haemorrhage", "deep")] * n_bleed)
    comps = [Component(f, ab.VALUES[k]) for k, _, _, _, f in abns]
    return acquire_pair(anat, abns, comps, rng, 20261202, seed)


def acquire_pair(anat: Anatomy, abns: list[tuple[str, str, np.ndarray, float, np.ndarray]],
                 comps: list[Component], rng: np.random.Generator, base: int, seed: int
                 ) -> SmallPair:
    """Both visits of a subject whose follow-up has ``comps`` (the abnormalities
    ``abns``), with every protocol: poses, scan centres and gains from ``rng``,
    each protocol's series from the generator ``[base, seed, len(protocol)]``,
    the noise of each image from ``[seed, visit, len(protocol), series]``."""
    brain = anat.brain_mask()
    centre = anat.affine[:3, :3] @ np.array(np.nonzero(brain)).mean(1) + anat.affine[:3, 3]
    poses = [random_pose(rng, centre, 3.0, 3.0), random_pose(rng, centre)]
    scans = [(poses[v] @ np.append(centre, 1))[:3] + rng.uniform(-5, 5, 3) for v in (0, 1)]
    gains = [float(rng.uniform(0.9, 1.1)) for _ in (0, 1)]
    images = {}
    for proto, preset in PROTOCOLS.items():
        prng = np.random.default_rng([base, seed, len(proto)])
        specs = [{s.contrast: s for s in _series_specs(PRESETS[preset], fu, prng)}
                 for fu in (False, True)]
        images[proto] = [_acquire(anat, comps if v else [], poses[v], scans[v], specs[v],
                                  [seed, v, len(proto)], gains[v]) for v in (0, 1)]
    return SmallPair(abns, poses, images)


def evaluate(sp: SmallPair, kinds: tuple[str, ...] = tuple(COMPARISONS)
             ) -> tuple[list[Truth], list[Pair]]:
    """Each protocol's comparisons of ``kinds``: each abnormality found or not, each
    comparison's flagged false positives and time."""
    abns, poses = sp.abns, sp.poses
    truths: list[Truth] = []
    pairs: list[Pair] = []
    for proto, imgs in sp.images.items():
        for kind in kinds:
            series, contrast, partner = COMPARISONS[kind]
            extra = ([(imgs[0][partner[0]], imgs[1][partner[0]], partner[1])] if partner
                     else None)
            t0 = time.perf_counter()
            res = detect_pair(imgs[0][series], imgs[1][series], contrast=contrast, extra=extra,
                              params=PARAMS)
            secs = time.perf_counter() - t0
            aff = sitk_affine_ras(res.baseline)
            tol = float(max(res.baseline.GetSpacing()))
            every = [(i, (poses[0] @ np.append(c, 1))[:3], d) for i, (_, _, c, d, _) in
                     enumerate(abns)]
            truth = [t for t in every if abns[t[0]][0] == kind]
            grid = np.indices(res.labels.shape, dtype=np.float32).reshape(3, -1)
            world_all = (aff[:3, :3] @ grid + aff[:3, 3:4]).T
            zone = {i: np.linalg.norm(world_all - c, axis=1) <= d / 2 + tol for i, c, d in every}
            hit: set[int] = set()
            best: dict[int, tuple[float, str]] = {}
            fp = 0
            lab = res.labels.ravel()
            for cd in res.candidates:
                near = [i for i in zone if np.any(zone[i] & (lab == cd["id"]))]
                for i in near:
                    if cd["evidence_z"] > best.get(i, (-np.inf, ""))[0]:
                        best[i] = (cd["evidence_z"], "; ".join(cd["reasons"]))
                if cd["flagged"]:
                    hit.update(near)
                    # on another inserted abnormality (a microbleed is dark on FLAIR and
                    # T2w too): a true change, neither found here nor a false positive
                    fp += not near
            zflat = np.abs(res.z).ravel()
            truths += [Truth(proto, kind, abns[i][1], d, i in hit, float(zflat[zone[i]].max()),
                             best.get(i, (0.0, "no candidate"))[1]) for i, _, d in truth]
            pairs.append(Pair(proto, kind, fp, secs))
    return truths, pairs


def table(truths: list[Truth], pairs: list[Pair], cmd: str) -> str:
    lines = [cmd, "", "| protocol | abnormality | size | found | sensitivity | bar |",
             "|---|---|---|---|---|---|"]
    bars = {"3-5 mm": ">= 0.80", ">5 mm": ">= 0.95"}
    found: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for t in truths:
        found[(t.protocol, t.kind, _size_bin(t.size_mm, SIZE_BINS))].append(t.found)
    for proto in PROTOCOLS:
        for kind in ("lesion", "haemorrhage"):
            for b in [_size_bin(lo, SIZE_BINS) for lo, _ in SIZE_BINS]:
                v = found.get((proto, kind, b), [])
                if v:
                    lines.append(f"| {proto} | {kind} | {b} | {sum(v)} of {len(v)} | "
                                 f"{sum(v) / len(v):.2f} | {bars.get(b, '')} |")
    lines += ["", "| protocol | comparison | pairs | flagged false positives | per pair "
              "| s per pair |", "|---|---|---|---|---|---|"]
    for proto in PROTOCOLS:
        for kind, name in (("lesion", "FLAIR + T2w pooled"), ("haemorrhage", "T2*w")):
            fp = [q for q in pairs if q.protocol == proto and q.kind == kind]
            n = sum(q.fp for q in fp)
            s = float(np.mean([q.seconds for q in fp]))
            lines.append(f"| {proto} | {name} | {len(fp)} | {n} | {n / len(fp):.2f} | {s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--lesions", type=int, default=8)
    ap.add_argument("--bleeds", type=int, default=4)
    ap.add_argument("--no-write", dest="write", action="store_false")
    add_param_overrides(ap)
    a = ap.parse_args()
    global PARAMS
    PARAMS = params_from(a.overrides)
    a.write = a.write and PARAMS is None
    anat = get_anatomy(1.0)
    truths: list[Truth] = []
    pairs: list[Pair] = []
    for s in a.seeds:
        ts, qs = evaluate(make_pair(anat, s, a.lesions, a.bleeds))
        truths += ts
        pairs += qs
        print(f"seed {s} done", flush=True)
    cmd = (f"`python benchmarks/detect_small.py` (seeds {', '.join(map(str, a.seeds))}; per "
           f"seed one pair per protocol with {a.lesions} new lesions and {a.bleeds} new "
           "microbleeds of 2-6 mm nominal diameter; size = equivalent diameter in brain "
           "tissue; found = a flagged candidate within radius + one voxel side of the true "
           "centre; 2 cores shared):")
    body = table(truths, pairs, cmd)
    print(body)
    for t in truths:
        if not t.found:
            print(f"missed: {t.protocol} {t.kind} {t.site} {t.size_mm:.1f} mm, largest |z| "
                  f"{t.peak_z:.1f}: {t.why}")
    if a.write:
        write_section("Small lesions on synthetic pairs (issue 5)", body)


if __name__ == "__main__":
    main()
