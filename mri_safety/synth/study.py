"""Generate a synthetic trial: patients x visits of brain + cervical spine DICOM with truth.

Layout of ``out_dir``::

    enrolment.csv                         patient_id,dosing_date
    dicom/<patient>/<visit>/<NN_kind>/IM0001.dcm ...
    ground_truth/<patient>/truth.json     every abnormality, pose and series
    ground_truth/<patient>/<visit>/volumes/<kind>.nii.gz   the generating volume
        (stored integer values, affine = scanner RAS) of each written series
    ground_truth/<patient>/<visit>/{labels,pv}_{native,baseline}.nii.gz
        new-abnormality labels (id per abnormality, 0 = none) and partial-volume
        maps on the visit's 3D T1w grid ("native") and on the baseline 3D T1w grid
    ground_truth/<patient>/<visit>/followup_to_baseline.tfm   ITK transform; use
        sitk.Resample(followup, baseline_grid, T) to bring the follow-up into baseline
        space (T maps baseline scanner points to follow-up scanner points)
    ground_truth/<patient>/<visit>/spine_{labels,pv}_{native,baseline}.nii.gz

Everything is deterministic for ``seed``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from mri_safety.synth import abnormal as ab
from mri_safety.synth.acquire import AcqSpec, degrade, grid_affine, random_pose, sample, vary_spec
from mri_safety.synth.anatomy import Anatomy, get_anatomy
from mri_safety.synth.contrast import Component, render
from mri_safety.synth.dicom_writer import PatientInfo, uid_from, write_series
from mri_safety.synth.sitkutil import ras_matrix_to_sitk
from mri_safety.synth.spine import (
    Spine,
    SpineT1,
    cord_blob,
    flexion_warp,
    load_spine,
    load_spine_t1,
)

VISIT_DAYS: dict[str, int] = {"baseline": -7, "24h": 1, "M2": 61, "M4": 122, "M6": 183,
                              "M12": 365}
DOSING_BASE = dt.date(2026, 3, 2)


@dataclass(frozen=True)
class Preset:
    """Generator settings. Sizes in mm."""

    voxel_mm: float
    visits: tuple[str, ...]
    t1_mm: float
    inplane_mm: float
    flair_mm: tuple[float, float]  # baseline, follow-up slice thickness
    other_mm: float
    dwi_mm: float
    spine_inplane_mm: float
    spine_mm: float


PRESETS: dict[str, Preset] = {
    "small": Preset(2.0, ("baseline", "24h", "M2"), 2.0, 2.0, (4.0, 3.0), 4.0, 4.0, 1.0, 3.0),
    "full": Preset(1.0, tuple(VISIT_DAYS), 1.0, 1.0, (4.0, 3.0), 3.0, 4.0, 0.6, 2.5),
}
SNR: dict[str, float] = {"T1w": 35, "T1w_post": 35, "T2w": 30, "FLAIR": 25, "T2starw": 25,
                         "DWI_b0": 40, "spine_T2w": 25, "spine_T1w": 25}
REF: dict[str, float] = {"T1w": 1.0, "T1w_post": 1.0, "T2w": 0.6, "FLAIR": 0.68, "T2starw": 0.66,
                         "DWI_b0": 0.78, "spine_T2w": 1.0, "spine_T1w": 1.0}
STORE_SCALE = 1000.0  # stored = value x 1000 (ADC in 10^-6 mm^2/s)

#: New abnormalities per follow-up, cycled over patients (index = patient % len).
#: Each entry lists, for follow-up 1, 2, ..., the brain kinds that appear then.
SCHEDULES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("infarct", "haemorrhage"), ("lesion_wm", "lesion_pv", "enhancing", "enlarging"),
     ("mass",), (), ("subdural", "ventricles")),
    ((), ("lesion_gm", "lesion_brainstem", "subdural", "enlarging"), ("haemorrhage",),
     ("lesion_wm", "ventricles"), ()),
    (("infarct",), ("mass", "ventricles"), (), ("lesion_pv",), ("enhancing",)),
)
#: New spine abnormalities per follow-up (24h, M2, M4, M6, M12), cycled over patients.
#: The second patient's 24h visit has nothing new in brain or spine (a no-change visit).
SPINE_SCHEDULES: tuple[tuple[tuple[str, ...], ...], ...] = (
    ((), ("cord_lesion",), ("syrinx",), (), ()),
    ((), ("syrinx",), (), ("cord_lesion",), ()),
    (("syrinx",), (), (), (), ()),
)


def _series_specs(p: Preset, fu: bool, rng: np.random.Generator) -> list[AcqSpec]:
    ip = (p.inplane_mm, p.inplane_mm)
    fl = p.flair_mm[1 if fu else 0]
    specs = [
        AcqSpec("T1w", "3d", "axial", (p.t1_mm, p.t1_mm), p.t1_mm, 0.0, (192, 240), 184),
        AcqSpec("FLAIR", "2d", "axial", ip, fl, 0.1 * fl if fu else 0.0, (200, 230), 150),
        AcqSpec("T2w", "2d", "axial", ip, p.other_mm, 0.0, (200, 230), 150),
        AcqSpec("T2starw", "2d", "axial", ip, p.other_mm, 0.0, (200, 230), 150),
        AcqSpec("DWI_b0", "2d", "axial", (2.0 * max(1, p.inplane_mm / 1.0),) * 2, p.dwi_mm, 0.0,
                (220, 220), 150),
        AcqSpec("T1w_post", "3d", "axial", (p.t1_mm, p.t1_mm), p.t1_mm, 0.0, (192, 240), 184),
    ]
    if fu:
        specs = [specs[0]] + [vary_spec(s, rng) if s.mode == "2d" else s for s in specs[1:]]
    return specs


def _make_abnormalities(anat: Anatomy, pidx: int, n_visits: int,
                        rng: np.random.Generator) -> list[ab.Abnormality]:
    sched = SCHEDULES[pidx % len(SCHEDULES)]
    out: list[ab.Abnormality] = []
    for v in range(1, n_visits):
        kinds = sched[(v - 1) % len(sched)] if v - 1 < len(sched) else ()
        for kind in kinds:
            seed = int(rng.integers(1 << 30))
            if kind.startswith("lesion_"):
                site = kind.split("_")[1]
                diam = float(rng.uniform(4, 14) if site != "brainstem" else rng.uniform(4, 8))
                c = ab.pick_site(anat, {"wm": "wm", "gm": "gm", "pv": "periventricular",
                                        "brainstem": "brainstem"}[site], rng, diam / 2)
                out.append(ab.Abnormality("lesion", site if site != "pv" else "periventricular",
                                          tuple(c), diam, v, seed))
            elif kind == "enlarging":
                diam = float(rng.uniform(5, 9))
                c = ab.pick_site(anat, "wm", rng, diam)
                out.append(ab.Abnormality("enlarging", "wm", tuple(c), diam, 0, seed,
                                          grow_factor=1.6, extra={"grows_at": v}))
            elif kind == "enhancing":
                diam = float(rng.uniform(6, 12))
                out.append(ab.Abnormality("enhancing", "wm", tuple(ab.pick_site(
                    anat, "wm", rng, diam / 2)), diam, v, seed))
            elif kind == "infarct":
                diam = float(rng.uniform(6, 14))
                out.append(ab.Abnormality("infarct", "deep", tuple(ab.pick_site(
                    anat, "deep", rng, diam / 2)), diam, v, seed))
            elif kind == "haemorrhage":
                diam = float(rng.choice([3.0, 5.0, 10.0]))
                out.append(ab.Abnormality("haemorrhage", "deep", tuple(ab.pick_site(
                    anat, "deep", rng, diam / 2)), diam, v, seed))
            elif kind == "mass":
                diam = float(rng.uniform(14, 20))
                out.append(ab.Abnormality("mass", "deep", tuple(ab.pick_site(
                    anat, "deep", rng, diam / 2 + 5)), diam, v, seed))
            elif kind == "subdural":
                c = ab.pick_site(anat, "convexity", rng, 0)
                out.append(ab.Abnormality("subdural", "convexity", tuple(c), 60.0, v, seed,
                                          extra={"thickness_mm": float(rng.uniform(4, 7))}))
            elif kind == "ventricles":
                out.append(ab.Abnormality("ventricles", "ventricles", (0.0, 0.0, 0.0), 0.0, v,
                                          seed, extra={"dilate_mm": float(rng.uniform(3, 5))}))
    return out


def _fraction(anat: Anatomy, a: ab.Abnormality, visit: int) -> np.ndarray | None:
    """Fraction map of ``a`` at ``visit`` (None when absent)."""
    if visit < a.appears:
        return None
    c = np.asarray(a.centre_ras)
    if a.kind == "subdural":
        return ab.subdural_fraction(anat, c, a.extra["thickness_mm"], 35.0)
    scale = a.grow_factor if (a.kind == "enlarging" and visit >= a.extra["grows_at"]) else 1.0
    f = ab.blob_fraction(anat, c, a.diameter_mm, a.seed, scale)
    if a.kind in ("lesion", "enlarging", "enhancing", "infarct", "haemorrhage"):
        f *= np.clip(anat.probs[2] + anat.probs[3], 0, 1)  # stays in brain tissue
    return f


def _subject_state(anat: Anatomy, abns: list[ab.Abnormality], visit: int, atrophy_frac: float
                   ) -> tuple[np.ndarray, np.ndarray, list[Component], dict[int, np.ndarray]]:
    """Tissue fractions, texture, abnormality components and truth fractions at a visit."""
    probs, tex = anat.probs, anat.texture
    comps: list[Component] = []
    truth: dict[int, np.ndarray] = {}
    probs = ab.atrophy(anat, probs, atrophy_frac)
    for i, a in enumerate(abns, start=1):
        if visit < a.appears:
            continue
        if a.kind == "ventricles":
            new = ab.ventricle_growth(anat, probs, a.extra["dilate_mm"])
            truth[i] = np.clip(new[1] - probs[1], 0, 1)
            probs = new
            continue
        if a.kind == "mass":
            probs, tex = ab.mass_effect(anat, probs, tex, np.asarray(a.centre_ras),
                                        0.5 * a.diameter_mm)
        f = _fraction(anat, a, visit)
        assert f is not None
        comps.append(Component(f, a.values_at(visit)))
        if a.kind == "enlarging":
            f0 = _fraction(anat, a, 0)
            assert f0 is not None
            if visit >= a.extra["grows_at"]:
                truth[i] = np.clip(f - f0, 0, 1)
        elif a.appears >= 1:
            truth[i] = f
    return probs, tex, comps, truth


BLOB_KINDS = ("lesion", "enlarging", "enhancing", "infarct", "haemorrhage", "mass")
_TISSUE_BOUND = ("lesion", "enlarging", "enhancing", "infarct", "haemorrhage")


#: A truth map restricted to a box of its grid: (first voxel index, values).
Boxed = tuple[tuple[int, int, int], np.ndarray]


def _box_of(support: np.ndarray, src_affine: np.ndarray, pose: np.ndarray, grid: np.ndarray,
            shape: tuple[int, int, int], margin: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box ``[lo, hi)`` of ``grid`` covering the non-zero part of ``support``.

    ``support`` lives on ``src_affine`` (voxel -> subject RAS mm); ``pose`` maps
    subject to scanner RAS mm; ``grid`` maps acquisition voxels to scanner RAS mm.
    """
    nz = np.argwhere(support > 0)
    if not len(nz):
        return np.zeros(3, int), np.zeros(3, int)
    lo_s, hi_s = nz.min(0) - 1, nz.max(0) + 1
    corners = np.array([[a, b, c, 1.0] for a in (lo_s[0], hi_s[0]) for b in (lo_s[1], hi_s[1])
                        for c in (lo_s[2], hi_s[2])]).T
    gv = (np.linalg.inv(grid) @ pose @ src_affine @ corners)[:3]
    lo = np.clip(np.floor(gv.min(1)).astype(int) - margin, 0, None)
    hi = np.minimum(np.ceil(gv.max(1)).astype(int) + margin + 1, shape)
    return lo, hi


def _truth_on_grid(anat: Anatomy, abns: list[ab.Abnormality], tfrac: dict[int, np.ndarray],
                   visit: int, pose: np.ndarray, spec: AcqSpec, grid: np.ndarray,
                   shape: tuple[int, int, int]) -> dict[int, Boxed]:
    """Truth fractions on a scanner grid, each in the box of the grid it can touch.

    Blob-shaped abnormalities are evaluated analytically at each grid voxel's
    subject-space position (edge ramp one grid voxel wide), so no
    interpolation of the truth happens; others (subdural, ventricles) are
    resampled linearly from the anatomy grid inside the box around their
    support (4 grid voxels of margin; zero outside, exactly as a whole-grid
    resampling would give). Boxes keep fine (0.5 mm) truth grids affordable.
    """
    out: dict[int, Boxed] = {}
    inv_grid = np.linalg.inv(grid)
    inv_pose = np.linalg.inv(pose)
    tissue = np.clip(anat.probs[2] + anat.probs[3], 0, 1)
    inv_anat = np.linalg.inv(anat.affine)
    vox = float(np.linalg.norm(grid[:3, 0]))
    for i in tfrac:
        a = abns[i - 1]
        if a.kind not in BLOB_KINDS:
            lo, hi = _box_of(tfrac[i], anat.affine, pose, grid, shape)
            if np.any(hi <= lo):
                out[i] = ((0, 0, 0), np.zeros((0, 0, 0), np.float32))
                continue
            sub = grid.copy()
            sub[:3, 3] = grid[:3, :3] @ lo + grid[:3, 3]
            box = tuple(int(n) for n in hi - lo)
            vals = sample(tfrac[i], anat.affine, pose, spec, sub, box)  # type: ignore[arg-type]
            out[i] = ((int(lo[0]), int(lo[1]), int(lo[2])), vals.astype(np.float32))
            continue
        c = np.asarray(a.centre_ras)
        cv = (inv_grid @ pose @ np.append(c, 1))[:3]
        rad = 0.5 * a.diameter_mm * max(a.grow_factor, 1.0) * 1.7 / vox + 3
        lo = np.clip(np.floor(cv - rad).astype(int), 0, None)
        hi = np.minimum(np.ceil(cv + rad).astype(int) + 1, shape)
        if np.any(hi <= lo):
            out[i] = ((0, 0, 0), np.zeros((0, 0, 0), np.float32))
            continue
        idx = np.indices(tuple(hi - lo), dtype=np.float64) + lo.reshape(3, 1, 1, 1)
        world = np.tensordot(grid[:3, :3], idx, axes=1) + grid[:3, 3].reshape(3, 1, 1, 1)
        subj = np.tensordot(inv_pose[:3, :3], world, axes=1) + inv_pose[:3, 3].reshape(3, 1, 1, 1)
        scale = a.grow_factor if (a.kind == "enlarging" and visit >= a.extra["grows_at"]) else 1.0
        val = ab.blob_at(subj, c, a.diameter_mm, a.seed, scale, vox)
        if a.kind == "enlarging":
            val = np.clip(val - ab.blob_at(subj, c, a.diameter_mm, a.seed, 1.0, vox), 0, 1)
        if a.kind in _TISSUE_BOUND:
            av = np.tensordot(inv_anat[:3, :3], subj, axes=1) + inv_anat[:3, 3].reshape(3, 1, 1, 1)
            val *= ndi.map_coordinates(tissue, av.reshape(3, -1), order=1,
                                       mode="nearest").reshape(val.shape)
        out[i] = ((int(lo[0]), int(lo[1]), int(lo[2])), val.astype(np.float32))
    return out


def _quantise(img: np.ndarray, scale: float = STORE_SCALE) -> np.ndarray:
    return np.clip(np.rint(img * scale), 0, 65535).astype(np.uint16)


def _save(arr: np.ndarray, aff: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def _labels(pvs: dict[int, np.ndarray] | dict[int, Boxed], shape: tuple[int, ...]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Label map (each voxel: the abnormality with the largest fraction >= 0.5) and the
    partial-volume map (largest fraction) from whole-grid or boxed truth fractions."""
    lab = np.zeros(shape, np.uint8)
    pv = np.zeros(shape, np.float32)
    for i, f in pvs.items():
        lo, vals = f if isinstance(f, tuple) else ((0, 0, 0), f)
        sl = tuple(slice(a, a + n) for a, n in zip(lo, vals.shape, strict=True))
        sel = (vals >= 0.5) & (vals > pv[sl])
        lab[sl][sel] = i
        pv[sl] = np.maximum(pv[sl], vals)
    return lab, pv


def generate_patient(out_dir: Path, pidx: int, seed: int, preset: str = "small",
                     anat: Anatomy | None = None, spine: Spine | None = None,
                     truth_mm: float = 0.5, spine_t1: SpineT1 | None = None) -> dict[str, Any]:
    """Generate one patient's visits (DICOM + truth); returns the truth record.

    ``truth_mm``: voxel size (mm) of the brain truth label / PV maps (isotropic
    grids in the T1w orientation of each visit and of the baseline).
    """
    p = PRESETS[preset]
    anat = anat if anat is not None else get_anatomy(p.voxel_mm)
    spine = spine if spine is not None else load_spine()
    spine_t1 = spine_t1 if spine_t1 is not None else load_spine_t1(spine)
    rng = np.random.default_rng([seed, pidx])
    pid = f"SYN{pidx + 1:03d}"
    dosing = DOSING_BASE + dt.timedelta(days=int(rng.integers(0, 120)))
    birth = f"19{int(rng.integers(45, 80))}0{int(rng.integers(1, 9))}15"
    patient = PatientInfo(pid, seed, birth_date=birth,
                          sex=str(rng.choice(["F", "M"])))
    abns = _make_abnormalities(anat, pidx, len(p.visits), rng)
    spine_abns: list[dict[str, Any]] = []
    for v in range(1, len(p.visits)):
        for kind in SPINE_SCHEDULES[pidx % len(SPINE_SCHEDULES)][v - 1]:
            spine_abns.append({"kind": kind, "appears": v, "seed": int(rng.integers(1 << 30)),
                               "level_rank": float(rng.uniform(0.2, 0.8)),
                               "length_mm": float(rng.uniform(6, 12) if kind == "cord_lesion"
                                                  else rng.uniform(12, 20))})
    atrophy_rate = float(rng.uniform(0.0, 0.01))  # per year
    brain = anat.brain_mask()
    centre = anat.affine[:3, :3] @ np.array(np.nonzero(brain)).mean(1) + anat.affine[:3, 3]
    gt_root = out_dir / "ground_truth" / pid
    truth: dict[str, Any] = {
        "patient_id": pid, "dicom_patient_id": patient.tags()["PatientID"],
        "dosing_date": dosing.isoformat(), "seed": seed, "preset": preset,
        "truth_voxel_mm": truth_mm,
        "atrophy_rate_per_year": atrophy_rate,
        "subject_space": "world RAS+ mm of the real head T1 (brain-t1-3d)",
        "abnormalities": [], "spine_abnormalities": spine_abns, "visits": [],
    }
    study_uid0 = ""
    base_pose = np.eye(4)
    base_t1_grid: tuple[np.ndarray, tuple[int, int, int]] | None = None
    spine_base: tuple[np.ndarray, np.ndarray, tuple[int, int, int], AcqSpec] | None = None
    base_specs = _series_specs(p, False, rng)
    for v, vname in enumerate(p.visits):
        vrng = np.random.default_rng([seed, pidx, v])
        days = VISIT_DAYS[vname] - (int(vrng.integers(0, 5)) if v == 0 else 0)
        date = dosing + dt.timedelta(days=days)
        nominal_base = dosing + dt.timedelta(days=VISIT_DAYS["baseline"])
        years = max(0.0, (date - nominal_base).days / 365.25)
        atrophy_frac = atrophy_rate * years if v > 0 else 0.0
        pose = random_pose(vrng, centre) if v > 0 else random_pose(vrng, centre, 3.0, 3.0)
        if v == 0:
            base_pose = pose
        specs = base_specs if v == 0 else _series_specs(p, True, vrng)
        probs, tex, comps, tfrac = _subject_state(anat, abns, v, atrophy_frac)
        study_uid = uid_from(seed, pid, vname, "study")
        study_uid0 = study_uid0 or study_uid
        accession = f"SYNTHPHI{seed % 1000:03d}{pidx:03d}{v:02d}"
        time_s = f"{8 + v:02d}{int(vrng.integers(0, 60)):02d}00"
        centre_scan = (pose @ np.append(centre, 1))[:3] + vrng.uniform(-5, 5, 3)
        if v == 0:
            base_centre_scan = centre_scan
        vdir = out_dir / "dicom" / pid / vname
        vgt = gt_root / vname
        series_rec = []
        gain = float(vrng.uniform(0.9, 1.1))
        sn = 1
        for spec in specs:
            grid, shape = grid_affine(spec, centre_scan)
            kinds = [spec.contrast] if spec.contrast != "DWI_b0" else ["DWI_b0", "DWI_b1000", "ADC"]
            noisy: dict[str, np.ndarray] = {}
            for kind in kinds:
                if kind == "ADC":
                    b0, b1 = noisy["DWI_b0"], noisy["DWI_b1000"]
                    ok = b0 > 0.25 * REF["DWI_b0"]
                    adc = np.where(ok, np.log(np.maximum(b0, 1e-3) / np.maximum(b1, 1e-3)), 0.0)
                    img = np.clip(adc, 0, 4.0).astype(np.float32)
                else:
                    subj = render(anat, probs, tex, kind, comps)
                    clean = sample(subj, anat.affine, pose, spec, grid, shape)
                    srng = np.random.default_rng([seed, pidx, v, sn])
                    key = "DWI_b0" if kind == "DWI_b1000" else kind
                    img = degrade(clean, grid, srng, SNR[key], REF[key], gain)
                    if kind == "DWI_b1000":  # same receive field as b0: reuse b0's bias
                        img = degrade(clean, grid, np.random.default_rng([seed, pidx, v, sn - 1]),
                                      SNR[key], REF[key], gain)
                noisy[kind] = img
                stored = _quantise(img)
                series_uid = uid_from(seed, pid, vname, kind)
                sdir = vdir / f"{sn:02d}_{kind}"
                thick = spec.thickness_mm
                write_series(stored, grid, sdir, kind=kind, patient=patient, study_uid=study_uid,
                             series_uid=series_uid, series_number=sn, study_date=date,
                             study_time=time_s, accession=accession, body_part="BRAIN",
                             rescale=(1.0, 0.0),
                             contrast_agent="Gadobutrol" if kind == "T1w_post" else None,
                             thickness_mm=thick)
                _save(stored, grid, vgt / "volumes" / f"{kind}.nii.gz")
                series_rec.append({"kind": kind, "dir": str(sdir.relative_to(out_dir)),
                                   "series_uid": series_uid, "series_number": sn,
                                   "affine": grid.tolist(), "shape": list(shape),
                                   "spec": asdict(spec), "body_part": "BRAIN"})
                sn += 1
            if spec.contrast == "T1w" and v == 0:
                base_t1_grid = (grid, shape)
        # truth maps (new abnormalities vs baseline) on truth_mm grids with this visit's and
        # the baseline's T1w orientation and centre
        assert base_t1_grid is not None
        tspec = replace(specs[0], inplane_mm=(truth_mm, truth_mm), thickness_mm=truth_mm)
        if v == 0:
            base_truth_grid = grid_affine(tspec, base_centre_scan)
        t_grid = grid_affine(tspec, centre_scan)
        pv_nat = _truth_on_grid(anat, abns, tfrac, v, pose, tspec, *t_grid)
        pv_base = _truth_on_grid(anat, abns, tfrac, v, base_pose, tspec, *base_truth_grid)
        lab_n, pv_n = _labels(pv_nat, t_grid[1])
        lab_b, pv_b = _labels(pv_base, base_truth_grid[1])
        _save(lab_n, t_grid[0], vgt / "labels_native.nii.gz")
        _save(pv_n, t_grid[0], vgt / "pv_native.nii.gz")
        _save(lab_b, base_truth_grid[0], vgt / "labels_baseline.nii.gz")
        _save(pv_b, base_truth_grid[0], vgt / "pv_baseline.nii.gz")
        fu_to_base = pose @ np.linalg.inv(base_pose)
        sitk.WriteTransform(ras_matrix_to_sitk(fu_to_base), str(vgt / "followup_to_baseline.tfm"))
        # spine
        s_rec, spine_base = _spine_visit(out_dir, spine, spine_abns, v, vname, vrng, seed, pidx,
                                         patient, study_uid, date, time_s, accession, p, sn,
                                         spine_base, vgt, spine_t1)
        series_rec += s_rec
        vox_ml = anat.voxel_mm**3
        truth["visits"].append({
            "name": vname, "index": v, "date": date.isoformat(), "days_from_dosing": days,
            "study_uid": study_uid, "pose_subject_to_scanner_ras": pose.tolist(),
            "followup_to_baseline_ras": fu_to_base.tolist(),
            "atrophy_fraction": atrophy_frac, "gain": gain, "series": series_rec,
            "new_abnormality_ids": sorted(tfrac),
            "new_abnormality_volume_mm3": {str(i): float(f.sum() * vox_ml)
                                           for i, f in tfrac.items()},
        })
    base_probs = anat.probs
    for i, a in enumerate(abns, start=1):
        rec = asdict(a)
        rec["id"] = i
        f_last = _subject_state(anat, [a], len(p.visits) - 1, 0.0)[3].get(1)
        rec["volume_mm3"] = float(f_last.sum() * anat.voxel_mm**3) if f_last is not None else 0.0
        rec["contrast_change"] = _contrast_change(anat, base_probs, a, len(p.visits) - 1)
        rec["visit_of_appearance"] = p.visits[a.extra.get("grows_at", a.appears)]
        rec["centre_ras_by_visit"] = {
            vr["name"]: (np.asarray(vr["pose_subject_to_scanner_ras"])
                         @ np.append(a.centre_ras, 1))[:3].tolist() for vr in truth["visits"]}
        truth["abnormalities"].append(rec)
    gt_root.mkdir(parents=True, exist_ok=True)
    (gt_root / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def _contrast_change(anat: Anatomy, probs: np.ndarray, a: ab.Abnormality, visit: int
                     ) -> dict[str, float]:
    """Ratio (after / before) of the mean clean intensity inside the abnormality core."""
    p1, t1, comps, tf = _subject_state(anat, [a], visit, 0.0)
    f = next(iter(tf.values()), None)
    if f is None or not (f > 0.9).any():
        return {}
    core = f > 0.9
    out = {}
    for c in ("T1w", "T1w_post", "T2w", "FLAIR", "T2starw", "DWI_b0", "DWI_b1000", "ADC"):
        before = render(anat, probs, anat.texture, c)[core].mean()
        after = render(anat, p1, t1, c, comps)[core].mean()
        out[c] = float(after / before) if before > 1e-6 else float("nan")
    return out


def _spine_visit(out_dir: Path, spine: Spine, abns: list[dict[str, Any]], v: int, vname: str,
                 rng: np.random.Generator, seed: int, pidx: int, patient: PatientInfo,
                 study_uid: str, date: dt.date, time_s: str, accession: str, p: Preset, sn: int,
                 base: tuple[np.ndarray, np.ndarray, tuple[int, int, int], AcqSpec] | None,
                 vgt: Path, spine_t1: SpineT1 | None = None
                 ) -> tuple[list[dict[str, Any]], tuple[np.ndarray, np.ndarray,
                                                       tuple[int, int, int], AcqSpec]]:
    """One visit's sagittal cervical T2w (series ``sn``) and, with ``spine_t1``, T1w
    (series ``sn + 1``) with cord lesion / syrinx truth.

    The T1w is planned like the T2w of the same visit: same flexion, same pose,
    same grid (the AcqSpec differs only in ``contrast``), so the spine truth maps
    (one set per visit, on that grid) describe both. Its noise, bias and gain come
    from their own generator, so the T2w and every other series are unchanged.
    """
    def insert(image: np.ndarray, f: np.ndarray, value: float, central: bool) -> np.ndarray:
        """A syrinx takes the fluid value, a cord lesion ``value`` x the cord there."""
        return (1 - f) * image + f * np.float32(value) * np.where(central, 1.0, image)

    img = spine.image.copy()
    img1 = spine_t1.image.copy() if spine_t1 is not None else None
    truth: dict[int, np.ndarray] = {}
    for i, a in enumerate(abns, start=1):
        if v < a["appears"]:
            continue
        central = a["kind"] == "syrinx"
        f = cord_blob(spine, a["level_rank"], a["length_mm"], 0.6 if central else 0.8,
                      a["seed"], central=central)
        img = insert(img, f, spine.csf_value if central else spine.lesion_ratio, central)
        if img1 is not None and spine_t1 is not None:
            # T1w: syrinx = CSF (dark), cord lesion = lesion_ratio x cord (isointense)
            img1 = insert(img1, f, spine_t1.csf_value if central else spine_t1.lesion_ratio,
                          central)
        truth[i] = f
    angle = float(rng.uniform(-8, 8)) if v > 0 else 0.0
    img = flexion_warp(img, spine.affine, angle)
    if img1 is not None:
        img1 = flexion_warp(img1, spine.affine, angle)
    truth = {i: flexion_warp(f, spine.affine, angle) for i, f in truth.items()}
    ctr = spine.affine[:3, :3] @ ((np.array(spine.image.shape) - 1) / 2) + spine.affine[:3, 3]
    pose = random_pose(rng, ctr, 4.0, 4.0) if v > 0 else np.eye(4)
    spec = AcqSpec("spine_T2w", "2d", "sagittal", (p.spine_inplane_mm, p.spine_inplane_mm),
                   p.spine_mm, 0.0, (56, 50), 40)
    grid, shape = grid_affine(spec, (pose @ np.append(ctr, 1))[:3])

    def write(kind: str, image: np.ndarray, number: int, noise: np.random.Generator,
              gain: float) -> dict[str, Any]:
        """Acquire ``image`` on this visit's grid as series ``number`` (DICOM + volume)."""
        spec_k = replace(spec, contrast=kind)  # same grid: only the contrast differs
        clean = sample(image, spine.affine, pose, spec_k, grid, shape)
        stored = _quantise(degrade(clean, grid, noise, SNR[kind], REF[kind], gain, 0.08))
        uid = uid_from(seed, patient.patient_id, vname, kind)
        sdir = out_dir / "dicom" / patient.patient_id / vname / f"{number:02d}_{kind}"
        write_series(stored, grid, sdir, kind=kind, patient=patient, study_uid=study_uid,
                     series_uid=uid, series_number=number, study_date=date, study_time=time_s,
                     accession=accession, body_part="CSPINE", thickness_mm=spec.thickness_mm)
        _save(stored, grid, vgt / "volumes" / f"{kind}.nii.gz")
        return {"kind": kind, "dir": str(sdir.relative_to(out_dir)), "series_uid": uid,
                "series_number": number, "affine": grid.tolist(), "shape": list(shape),
                "spec": asdict(spec_k), "body_part": "CSPINE", "flexion_deg": angle,
                "pose_subject_to_scanner_ras": pose.tolist()}

    rec = [write("spine_T2w", img, sn, np.random.default_rng([seed, pidx, v, 99]),
                 float(rng.uniform(0.9, 1.1)))]
    if base is None:
        base = (pose, grid, shape, spec)
    pv_n = {i: sample(f, spine.affine, pose, spec, grid, shape) for i, f in truth.items()}
    # baseline space: undo flexion is not rigid, so map the unflexed truth with the baseline pose
    pv_b = {i: sample(flexion_warp(f, spine.affine, -angle), spine.affine, base[0], base[3],
                      base[1], base[2]) for i, f in truth.items()}
    for name, pvs, g, shp in (("native", pv_n, grid, shape), ("baseline", pv_b, base[1], base[2])):
        lab, pv = _labels(pvs, shp)
        _save(lab, g, vgt / f"spine_labels_{name}.nii.gz")
        _save(pv, g, vgt / f"spine_pv_{name}.nii.gz")
    if img1 is not None:
        t1rng = np.random.default_rng([seed, pidx, v, 101])  # own noise / bias / gain
        rec.append(write("spine_T1w", img1, sn + 1, t1rng, float(t1rng.uniform(0.9, 1.1))))
    return rec, base


def generate_trial(out_dir: Path, n_patients: int, seed: int, preset: str = "small",
                   truth_mm: float = 0.5) -> Path:
    """Write a whole synthetic trial to ``out_dir`` (deterministic for ``seed``);
    ``truth_mm`` is the voxel size of the brain truth maps."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    anat = get_anatomy(PRESETS[preset].voxel_mm)
    spine = load_spine()
    spine_t1 = load_spine_t1(spine)
    rows = []
    for i in range(n_patients):
        t = generate_patient(out_dir, i, seed, preset, anat, spine, truth_mm, spine_t1)
        rows.append((t["dicom_patient_id"], t["dosing_date"]))
    with open(out_dir / "enrolment.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "dosing_date"])
        w.writerows(rows)
    return out_dir


__all__ = ["PRESETS", "Preset", "generate_patient", "generate_trial", "replace"]
