"""Loaders for evaluation pairs: real MS follow-ups, real no-change pairs, synthetic pairs.

A :class:`Pair` holds a ``fixed`` (baseline) image, a ``moving`` (follow-up)
image as SimpleITK images (LPS geometry, as SimpleITK uses), and, where
known, a ``truth`` change mask on the fixed grid and a ``true_transform``
(ITK convention: maps fixed points to moving points, so
``sitk.Resample(moving, fixed, T)`` brings the follow-up onto the fixed grid).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mri_safety.synth.sitkutil import array_to_sitk

DATA = Path(os.environ.get("MRI_SAFETY_DATA", Path(__file__).resolve().parents[2].parent
                           / "shared" / "data"))
POSITIONS = ("HFS", "HFP", "HFDL", "HFDR")


@dataclass
class Pair:
    """One baseline/follow-up pair for scoring. ``truth``: uint8 array (i, j, k) on
    the fixed grid or None (no-change pair: every candidate is a false positive)."""

    name: str
    fixed: sitk.Image
    moving: sitk.Image
    truth: np.ndarray | None
    mask: sitk.Image | None = None
    true_transform: sitk.Transform | None = None
    moving_prealigned: bool = False  # True when moving is already on the fixed grid


def _read(p: Path) -> sitk.Image:
    if not p.exists():
        raise FileNotFoundError(f"{p}: file not found")
    return sitk.Cast(sitk.ReadImage(str(p)), sitk.sitkFloat32)


def load_ms_pair(patient: str = "patient01", root: Path | None = None) -> Pair:
    """A longitudinal-ms pair: both FLAIRs brought into the common space.

    The common grid is ``brainmask_common_space``; each
    ``studyN_FLAIR_to_common_space.txt`` maps common points to raw points, so
    ``sitk.Resample(raw, common, T)`` gives the FLAIR in common space.
    ``gt.nii.gz`` (expert change mask) is already in common space.
    """
    d = (root or DATA / "longitudinal-ms") / patient
    grid = sitk.ReadImage(str(d / "brainmask_common_space.nii.gz"))
    imgs = []
    for s in ("study1", "study2"):
        raw = _read(d / f"{s}_FLAIR.nii.gz")
        tx = sitk.ReadTransform(str(d / f"{s}_FLAIR_to_common_space.txt"))
        imgs.append(sitk.Resample(raw, grid, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    gt = sitk.ReadImage(str(d / "gt.nii.gz"))
    truth = np.transpose(sitk.GetArrayFromImage(gt), (2, 1, 0)) > 0
    return Pair(f"ms-{patient}", imgs[0], imgs[1], truth.astype(np.uint8),
                mask=sitk.Cast(grid > 0, sitk.sitkUInt8), true_transform=sitk.Transform(),
                moving_prealigned=True)


def convert_dir(path: Path) -> sitk.Image:
    """Convert one DICOM series directory with the project converter."""
    from mri_safety.dicom.series import load_series_dir
    from mri_safety.dicom.volume import convert_series

    groups = load_series_dir(path)
    if len(groups) != 1:
        raise ValueError(f"{path}: expected one series, found {len(groups)}")
    img = convert_series(groups[0]).to_nifti()
    data = np.asarray(img.dataobj, dtype=np.float32)
    return array_to_sitk(data, img.affine)


def load_positions_pair(a: str = "HFS", b: str = "HFP", root: Path | None = None) -> Pair:
    """Real no-change pair: one volunteer scanned in two patient positions."""
    d = root or DATA / "dicom" / "patient-positions"
    return Pair(f"positions-{a}-{b}", convert_dir(d / a), convert_dir(d / b), None)


def _uniform_bright_voxels(img: sitk.Image, level_pct: float, sd_frac: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels ``[k, j, i]`` of a T1 head (above its 60th percentile) whose 5 mm
    neighbourhood has a mean above the head's ``level_pct`` percentile and an SD
    under ``sd_frac`` x that level (uniform bright tissue: white matter); with the
    voxel spacing in array order and the head mask."""
    from scipy import ndimage as ndi

    a = sitk.GetArrayFromImage(img).astype(np.float32)  # [k, j, i]
    sp = np.array(img.GetSpacing()[::-1])
    size = [int(round(5.0 / s)) | 1 for s in sp]
    mean = ndi.uniform_filter(a, size)
    sd = np.sqrt(np.maximum(ndi.uniform_filter(a * a, size) - mean * mean, 0))
    head = a > np.percentile(a, 60)
    level = float(np.percentile(a[head], level_pct))
    return np.argwhere(head & (mean > level) & (sd < sd_frac * level)), sp, head


def _deep_white_matter_point(img: sitk.Image) -> tuple[float, float, float]:
    """A deep white-matter point (LPS mm) of a T1 head: among voxels of the brightest
    15 % of the head whose 5 mm neighbourhood is uniform, the one nearest to the
    head centroid moved 25 mm along the first voxel axis and 10 mm along the third."""
    from scipy import ndimage as ndi

    kji, sp, head = _uniform_bright_voxels(img, 85.0, 0.05)
    target = np.array(ndi.center_of_mass(head)) + np.array([10.0, 0.0, 25.0]) / sp
    best = kji[np.argmin((((kji - target) * sp) ** 2).sum(axis=1))]
    pt = img.TransformIndexToPhysicalPoint([int(v) for v in best[::-1]])
    return (float(pt[0]), float(pt[1]), float(pt[2]))


def _white_matter_points(img: sitk.Image, n: int, apart_mm: float = 25.0,
                         seed: int = 7) -> list[tuple[float, float, float]]:
    """``n`` white-matter points (LPS mm) of a T1 head, at least ``apart_mm`` apart:
    drawn (seeded) among voxels of the brightest 20 % of the head whose 5 mm
    neighbourhood is uniform (SD < 6 % of that level)."""
    kji, sp, _ = _uniform_bright_voxels(img, 80.0, 0.06)
    rng = np.random.default_rng(seed)
    picked: list[np.ndarray] = []
    for _ in range(100000):
        if len(picked) == n:
            break
        c = kji[rng.integers(len(kji))]
        if all(np.linalg.norm((c - q) * sp) >= apart_mm for q in picked):
            picked.append(c)
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} white-matter points {apart_mm} mm apart")
    out = []
    for c in picked:
        pt = img.TransformIndexToPhysicalPoint([int(v) for v in c[::-1]])
        out.append((float(pt[0]), float(pt[1]), float(pt[2])))
    return out


def load_highres_t1_pair(focus_mm: float = 0.0, gain: float = 0.6, n_foci: int = 1,
                         root: Path | None = None) -> Pair:
    """The real 3D T1 of brain-t1-3d (0.7 mm, its dcm2niix reference NIfTI) and
    itself moved by :func:`mri_safety.register.simulate.known_motion` (7/-4/3 deg,
    10/-6/4 mm, bias field, 3 % Rician noise, seed 1234): a no-change pair with a
    known transform. With ``focus_mm`` > 0, spheres of that diameter at ``gain``
    x the tissue are put in white matter before the motion: one at
    :func:`_deep_white_matter_point` (``n_foci`` = 1), or ``n_foci`` at
    :func:`_white_matter_points` (seeded, >= 25 mm apart). ``truth``: label map
    of the spheres (1..n) on the baseline grid, ``(i, j, k)``."""
    from mri_safety.register.simulate import known_motion

    p = (root or DATA / "dicom" / "brain-t1-3d") / "ref" / "anat-T1w.nii.gz"
    img = _read(p)
    head = sitk.OtsuThreshold(img, 0, 1)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(head)
    src, truth = img, None
    if focus_mm > 0:
        pts = ([_deep_white_matter_point(img)] if n_foci == 1
               else _white_matter_points(img, n_foci))
        a = sitk.GetArrayFromImage(img)  # [k, j, i]
        truth = np.zeros(img.GetSize(), np.uint8)
        sp = np.array(img.GetSpacing())
        d = np.array(img.GetDirection()).reshape(3, 3) * sp
        for lab, pt in enumerate(pts, start=1):
            c = np.array(img.TransformPhysicalPointToContinuousIndex(list(pt)))  # (i, j, k)
            half = np.ceil(focus_mm / 2 / sp).astype(int) + 1
            lo = np.maximum(np.round(c).astype(int) - half, 0)
            hi = np.minimum(np.round(c).astype(int) + half + 1, np.array(img.GetSize()))
            box = np.indices(hi - lo).reshape(3, -1).T + lo  # (i, j, k)
            world = np.array(img.GetOrigin()) + box @ d.T
            inside = box[np.linalg.norm(world - np.array(pt), axis=1) <= focus_mm / 2]
            a[inside[:, 2], inside[:, 1], inside[:, 0]] *= gain
            truth[inside[:, 0], inside[:, 1], inside[:, 2]] = lab
        src = sitk.GetImageFromArray(a)
        src.CopyInformation(img)
    moved, true = known_motion(src, stats.GetCentroid(1))
    name = "highres-t1" + (f"-{n_foci}x{focus_mm:g}mm" if focus_mm > 0 else "")
    return Pair(name, img, moved, truth, true_transform=true)


def deep_white_matter_points(baseline: sitk.Image, brain: np.ndarray, n: int,
                             apart_mm: float = 40.0, depth_mm: float = 15.0
                             ) -> list[np.ndarray]:
    """``n`` deep white-matter points (LPS mm) of a T1w ``baseline``: voxels of
    ``brain`` (``(i, j, k)``, e.g. a registered pair's brain mask) in the brightest
    quarter of it, more than ``depth_mm`` inside it and 3 x 3 x 3 uniform in that
    class; the first at a third of them in array order, each next one the middle
    of those at least ``apart_mm`` from every point taken (deterministic)."""
    from scipy import ndimage as ndi

    b = np.transpose(sitk.GetArrayFromImage(baseline), (2, 1, 0))
    depth = ndi.distance_transform_edt(brain, sampling=baseline.GetSpacing())
    wm = brain & (b > np.percentile(b[brain], 75)) & (depth > depth_mm)
    wm &= ndi.binary_erosion(wm, np.ones((3, 3, 3), bool))
    pts = [np.array(baseline.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in ijk])) for ijk in np.argwhere(wm)]
    if not pts:
        raise ValueError("no deep white-matter voxel in the brain mask")
    out = [pts[len(pts) // 3]]
    while len(out) < n:
        far = [q for q in pts if all(np.linalg.norm(q - a) >= apart_mm for a in out)]
        if not far:
            raise ValueError(f"only {len(out)} white-matter points {apart_mm} mm apart")
        out.append(far[len(far) // 2])
    return out


def put_foci(moving: sitk.Image, to_moving: sitk.Transform,
             foci: list[tuple[np.ndarray, float, float]]) -> sitk.Image:
    """``moving`` with spheres ``(centre, diameter_mm, gain)``: each centre (LPS mm,
    in the baseline's space) is taken to ``moving`` by ``to_moving`` (baseline ->
    follow-up points, as a registration gives), and the sphere's voxels become
    ``gain`` x the median of the voxels it fills, with the partial volume of the
    follow-up's voxels (3 x 3 x 3 sub-samples per voxel)."""
    fu = sitk.GetArrayFromImage(moving).astype(np.float64)  # [k, j, i]
    sp = np.array(moving.GetSpacing())
    d = np.array(moving.GetDirection()).reshape(3, 3) * sp
    o = np.array(moving.GetOrigin())
    sub = (np.indices((3, 3, 3)).reshape(3, -1).T - 1) / 3.0
    for centre, diam, gain in foci:
        q = np.array(to_moving.TransformPoint(tuple(float(v) for v in centre)))
        ctr = np.linalg.solve(d, q - o)
        reach = diam / 2 + 3.0
        lo = np.maximum(np.floor(ctr - reach / sp), 0).astype(int)
        hi = np.minimum(np.ceil(ctr + reach / sp) + 1, np.array(moving.GetSize())).astype(int)
        box = np.indices(hi - lo).reshape(3, -1).T + lo
        pos = o + (box[:, None, :] + sub[None]) @ d.T
        frac = (np.linalg.norm(pos - q, axis=2) <= diam / 2).mean(axis=1)
        k = (box[:, 2], box[:, 1], box[:, 0])
        ref = float(np.median(fu[k][frac > 0.5]))
        fu[k] = (1 - frac) * fu[k] + frac * gain * ref
    out = sitk.GetImageFromArray(fu.astype(np.float32))
    out.CopyInformation(moving)
    return out


def load_synth_pair(study: Path, patient: str, visit: str, contrast: str = "FLAIR") -> Pair:
    """Synthetic pair: baseline vs ``visit`` of ``contrast`` from a generated study.

    The fixed image is the baseline series on its own grid; the truth labels
    (1 mm baseline truth grid) are resampled onto it (nearest neighbour, same
    scanner space); the moving image is the follow-up series in native space;
    ``true_transform`` is the recorded follow-up -> baseline transform.
    """
    gt = study / "ground_truth" / patient
    if not (gt / "truth.json").exists():
        raise FileNotFoundError(f"{gt / 'truth.json'}: no synthetic truth")

    def vol(v: str) -> sitk.Image:
        im = nib.load(str(gt / v / "volumes" / f"{contrast}.nii.gz"))
        return array_to_sitk(np.asarray(im.dataobj, np.float32), im.affine)  # type: ignore[attr-defined]

    fixed = vol("baseline")
    lab_img = nib.load(str(gt / visit / "labels_baseline.nii.gz"))
    lab_s = array_to_sitk(np.asarray(lab_img.dataobj, np.float32), lab_img.affine)  # type: ignore[attr-defined]
    lab = np.transpose(sitk.GetArrayFromImage(sitk.Resample(
        lab_s, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)), (2, 1, 0))
    tx = sitk.ReadTransform(str(gt / visit / "followup_to_baseline.tfm"))
    return Pair(f"synth-{patient}-{visit}-{contrast}", fixed, vol(visit), lab.astype(np.uint8),
                true_transform=tx)


def synth_visits(study: Path) -> list[tuple[str, str, list[int]]]:
    """(patient, visit, new abnormality ids) for every follow-up of a generated study."""
    out = []
    for tj in sorted((study / "ground_truth").glob("*/truth.json")):
        t = json.loads(tj.read_text())
        for v in t["visits"][1:]:
            out.append((t["patient_id"], v["name"], list(v["new_abnormality_ids"])))
    return out
