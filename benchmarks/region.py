"""Anatomical region of brain candidates: the affine template fit against ANTs SyN.

Usage::

    python benchmarks/region.py [--no-write] [--step N]

``location.anatomical_region`` (``mri_safety.change.region``) maps a candidate
into the Desikan-Killiany + aseg atlas through the baseline's 12-parameter
affine MNI template fit (the brain-mask step's, no extra registration). The
anchor is a deformable registration run in the same script: antspyx ``SyN``
(affine + symmetric normalisation, Mattes MI, antspyx defaults) of the same
MNI152 2009a template (2 mm) to the same bias-corrected image resampled to
2 mm isotropic, skull-stripped with the mask step's brain mask dilated by 3 mm
(unstripped, SyN fitted the template brain to the scalp: 26-38 mm median
disagreement on the position T1s, with the warped template on the scalp).
For every ``--step``-th brain-mask voxel of each real image
the region and the MNI point are taken both ways; the table gives how often
the coarse region agrees, the distance between the two MNI points, and the
time of each mapping. Images: patient-positions T1 (HFS, HFP, HFDL, HFDR; 2D
sagittal, 4.8 mm), the baseline FLAIR of longitudinal-ms patient01 and
patient03, and the 3D head T1 (brain-t1-3d, 2 mm). Where the mask step rejects
its own fit (morphological fallback), the region is ``unknown`` and that image
is reported as such, with the agreement the rejected fit would have had.
ANTs runs with one thread and ``ANTS_RANDOM_SEED`` (reproducible).
Writes the section "Anatomical region of candidates (issue 5)" of
``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("ANTS_RANDOM_SEED", "17")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from mri_safety.change.masks import brain_mask, dilate_mm, img_like  # noqa: E402
from mri_safety.change.region import REGIONS, regions_at, subject_to_mni_ras  # noqa: E402
from mri_safety.preprocess.bias import n4_correct  # noqa: E402
from mri_safety.preprocess.masks import brain_masks, mni_template  # noqa: E402
from mri_safety.register.transforms import load_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRI_SAFETY_DATA", REPO.parent / "shared" / "data")).resolve()
IMAGES = {
    **{f"positions {p} T1": DATA / "dicom" / "patient-positions" / "ref" / f"{p}_t1_fl2d_sag.nii.gz"
       for p in ("HFS", "HFP", "HFDL", "HFDR")},
    **{f"MS {p} FLAIR": DATA / "longitudinal-ms" / p / "study1_FLAIR.nii.gz"
       for p in ("patient01", "patient03")},
    "brain-t1-3d T1 (2 mm)": DATA / "dicom" / "brain-t1-3d" / "ref" / "anat-T1w.nii.gz",
}
LPS = np.array([-1.0, -1.0, 1.0])


def _iso2(img: sitk.Image) -> sitk.Image:
    """``img`` resampled (linear) to 2 mm isotropic over the same extent, same direction."""
    size = [max(1, int(round(s * sp / 2.0)))
            for s, sp in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                         [2.0] * 3, img.GetDirection(), 0.0, sitk.sitkFloat32)


def _to_ants(img: sitk.Image):  # type: ignore[no-untyped-def]
    import ants

    a = ants.from_numpy(sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32),
                        origin=list(img.GetOrigin()), spacing=list(img.GetSpacing()),
                        direction=np.asarray(img.GetDirection()).reshape(3, 3))
    return a


def syn_mni_points(subject: sitk.Image, brain: np.ndarray, points_lps: np.ndarray
                   ) -> tuple[np.ndarray, float]:
    """MNI RAS mm of subject points (LPS mm) through antspyx SyN of the 2 mm template
    (moving, skull-stripped) to ``subject`` skull-stripped with its brain mask
    (``[i, j, k]``) dilated by 3 mm (fixed, 2 mm); returns (points, seconds). Without
    the stripping SyN fits the template brain to the scalp."""
    import ants
    import pandas as pd

    t1, _, _ = mni_template(2)
    sp = tuple(float(v) for v in subject.GetSpacing())
    strip = img_like(dilate_mm(brain, 3.0, sp).astype(np.float32), subject)
    fixed = _to_ants(_iso2(sitk.Cast(subject, sitk.sitkFloat32) * strip))
    moving = _to_ants(t1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # antspyx globs its output prefix
        reg = ants.registration(fixed, moving, type_of_transform="SyN",
                                outprefix=str(Path(tmp) / "syn_"))
        # point sets go the other way from images: the forward transforms take
        # fixed-space (subject) points into the moving (template) space
        df = pd.DataFrame(points_lps, columns=["x", "y", "z"])
        out = ants.apply_transforms_to_points(3, df, reg["fwdtransforms"])
    secs = time.perf_counter() - t0
    return np.asarray(out[["x", "y", "z"]], np.float64) * LPS, secs


def check_point_direction() -> float:
    """Largest |template(T(p)) - warped template(p)| / template range over brain points
    of one SyN run on the template moved by a rigid pose: confirms that the forward
    transforms map subject points to template points (0 up to interpolation)."""
    import ants
    import pandas as pd

    t1, _, _ = mni_template(2)
    pose = sitk.Euler3DTransform(
        t1.TransformContinuousIndexToPhysicalPoint([s / 2 for s in t1.GetSize()]),
        0.1, -0.05, 0.08, (6.0, -4.0, 5.0))
    subj = sitk.Resample(t1, t1, pose, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    fixed, moving = _to_ants(subj), _to_ants(t1)
    with tempfile.TemporaryDirectory() as tmp:
        reg = ants.registration(fixed, moving, type_of_transform="SyN",
                                outprefix=str(Path(tmp) / "syn_"))
        a = sitk.GetArrayFromImage(subj).transpose(2, 1, 0)
        ijk = np.argwhere(a > np.percentile(a[a > 0], 50))[::200]
        pts = np.array([subj.TransformContinuousIndexToPhysicalPoint([float(v) for v in p])
                        for p in ijk])
        mapped = ants.apply_transforms_to_points(
            3, pd.DataFrame(pts, columns=["x", "y", "z"]), reg["fwdtransforms"])
        m = np.asarray(mapped[["x", "y", "z"]], np.float64)
    # the truth: subject point p shows the template at pose(p)
    truth = np.array([pose.TransformPoint(tuple(p)) for p in pts])
    return float(np.median(np.linalg.norm(m - truth, axis=1)))


def evaluate(name: str, path: Path, step: int) -> dict[str, object]:
    img = load_image(path)
    img = n4_correct(_iso2(img) if name.endswith("(2 mm)") else img)[0]
    t0 = time.perf_counter()
    ms = brain_mask(img)
    mask_secs = time.perf_counter() - t0
    # the fit itself, also where the mask step rejected it (to report what it would give)
    fit = (ms.subject_to_mni if ms.subject_to_mni is not None
           else subject_to_mni_ras(brain_masks(img).template_to_subject))
    ijk = np.argwhere(ms.brain)[::step]
    pts = np.array([img.TransformContinuousIndexToPhysicalPoint([float(v) for v in p])
                    for p in ijk])
    ras = pts * LPS
    aff_mni = ras @ fit[:3, :3].T + fit[:3, 3]
    syn_mni, syn_secs = syn_mni_points(img, ms.brain, pts)
    ra, rs = regions_at(aff_mni), regions_at(syn_mni)
    d = np.linalg.norm(aff_mni - syn_mni, axis=1)
    by_region = {}
    for k in np.unique(rs):
        sel = rs == k
        by_region[REGIONS[int(k)]] = (int(sel.sum()), float((ra[sel] == k).mean()))
    return {"name": name, "accepted": ms.subject_to_mni is not None, "method": ms.method,
            "n": len(pts), "agree": float((ra == rs).mean()), "d_med": float(np.median(d)),
            "d_90": float(np.percentile(d, 90)), "mask_secs": mask_secs, "syn_secs": syn_secs,
            "by_region": by_region}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--step", type=int, default=20, help="every N-th brain voxel")
    a = ap.parse_args()
    direction = check_point_direction()
    rows = [evaluate(n, p, a.step) for n, p in IMAGES.items() if p.exists()]
    lines = [
        "`python benchmarks/region.py`: the coarse anatomical region of brain points through "
        "the mask step's affine MNI template fit (what `location.anatomical_region` uses) "
        "against antspyx SyN (affine + deformable, defaults, one thread, seeded) of the same "
        "template to the same image, skull-stripped with the brain mask dilated 3 mm, at "
        "2 mm; every "
        f"{a.step}th brain-mask voxel. Point direction check of the SyN mapping (template "
        f"moved by a known pose): median error {direction:.2f} mm.", "",
        "| image | affine fit used | points | same region as SyN | MNI distance median | "
        "90th pct | masks step (incl. the fit) | SyN |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        used = "yes" if r["accepted"] else f"no ({r['method']}: region `unknown`)"
        lines.append(f"| {r['name']} | {used} | {r['n']} | {r['agree']:.2f} | "
                     f"{r['d_med']:.1f} mm | {r['d_90']:.1f} mm | {r['mask_secs']:.1f} s | "
                     f"{r['syn_secs']:.0f} s |")
    acc = [r for r in rows if r["accepted"]]
    if acc:
        pooled: dict[str, list[tuple[int, float]]] = {}
        for r in acc:
            for k, v in r["by_region"].items():  # type: ignore[attr-defined]
                pooled.setdefault(k, []).append(v)
        lines += ["", "Agreement by SyN region, images whose fit is used (points-weighted): "
                  + ", ".join(f"{k} {sum(n * f for n, f in v) / sum(n for n, _ in v):.2f} "
                              f"(n={sum(n for n, _ in v)})"
                              for k, v in sorted(pooled.items(), key=lambda kv: -sum(
                                  n for n, _ in kv[1]))) + "."]
    lines += ["", "The affine fit costs nothing extra (it is the brain-mask step's own); SyN "
              "is the time a deformable atlas registration would add per baseline series."]
    body = "\n".join(lines)
    print(body)
    if a.write:
        write_section("Anatomical region of candidates (issue 5)", body)


if __name__ == "__main__":
    main()
