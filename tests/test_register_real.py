"""Registration and quality flag on real pairs (all slow: several real registrations).

* patient-positions (HFS/HFP/HFDL/HFDR, 2D sagittal, same head repositioned):
  6 no-change pairs must register with quality "ok"; overlap fraction reported.
* longitudinal-ms patient01/03: study2 -> study1 FLAIR rigid vs the composition
  of the provided transforms to the common space, mean displacement over the
  brain mask < 1.5 mm.
* calibration: known misregistrations (1, 2 mm; 1, 2, 5 deg) applied to a
  real registered pair must raise the flag; the unperturbed pair must not;
  0.5 mm is printed (reported), not asserted.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import need_data

from mri_safety.preprocess.bias import n4_correct
from mri_safety.preprocess.masks import brain_masks
from mri_safety.register.quality import assess, perturb
from mri_safety.register.rigid import register
from mri_safety.register.transforms import displacement_mm, mask_points, nib_to_sitk

POSITIONS = ("HFS", "HFP", "HFDL", "HFDR")


@lru_cache(maxsize=8)
def position_image(pos: str) -> sitk.Image:
    from mri_safety.dicom.series import load_series_dir
    from mri_safety.dicom.volume import convert_series

    groups = load_series_dir(need_data("dicom", "patient-positions", pos))
    assert len(groups) == 1
    img = nib_to_sitk(convert_series(groups[0]).to_nifti(), np.float32)
    return n4_correct(img)[0]


@lru_cache(maxsize=8)
def position_mask(pos: str) -> sitk.Image:
    return brain_masks(position_image(pos)).brain


@pytest.mark.slow
def test_patient_positions_no_change_pairs() -> None:
    rows = []
    for fpos, mpos in itertools.combinations(POSITIONS, 2):
        fixed, moving, mask = position_image(fpos), position_image(mpos), position_mask(fpos)
        res = register(fixed, moving, mask)
        q = assess(fixed, moving, res.transform, mask)
        rows.append((fpos, mpos, q))
        print(f"{mpos} -> {fpos}: ncc {q.ncc:.3f} edge {q.edge:.3f} overlap {q.overlap:.3f} "
              f"gain {q.gain:.4f} {q.status} {q.reasons} ({res.seconds:.1f} s, init {res.init})")
    assert all(q.status == "ok" for _, _, q in rows), [(f, m, q.reasons) for f, m, q in rows]
    assert all(q.overlap > 0.8 for _, _, q in rows)


@lru_cache(maxsize=4)
def ms_flair(patient: str, study: str) -> sitk.Image:
    p = need_data("longitudinal-ms", patient, f"{study}_FLAIR.nii.gz")
    return n4_correct(sitk.ReadImage(str(p), sitk.sitkFloat32))[0]


@pytest.mark.slow
@pytest.mark.parametrize("patient", ["patient01", "patient03"])
def test_ms_pair_agrees_with_common_space_transforms(patient: str) -> None:
    d = need_data("longitudinal-ms", patient)
    f, m = ms_flair(patient, "study1"), ms_flair(patient, "study2")
    mask = brain_masks(f).brain
    res = register(f, m, mask)
    # provided transforms map common-space points to raw FLAIR points
    t1 = sitk.ReadTransform(str(d / "study1_FLAIR_to_common_space.txt"))
    t2 = sitk.ReadTransform(str(d / "study2_FLAIR_to_common_space.txt"))
    common = sitk.ReadImage(str(d / "brainmask_common_space.nii.gz"))
    pc = mask_points(common, step=3)
    p1 = np.array([t1.TransformPoint([float(v) for v in q]) for q in pc])
    p2 = np.array([t2.TransformPoint([float(v) for v in q]) for q in pc])
    ident = sitk.Euler3DTransform()
    ours = displacement_mm(res.transform, ident, p1)  # |T(p1) - p1|: our motion
    est = np.array([res.transform.TransformPoint([float(v) for v in q]) for q in p1])
    diff = np.linalg.norm(est - p2, axis=1)
    q = assess(f, m, res.transform, mask)
    print(f"{patient}: ours vs composition mean {diff.mean():.3f} mm, p95 "
          f"{np.percentile(diff, 95):.3f} mm (motion magnitude {ours.mean():.2f} mm); "
          f"quality {q.status} ncc {q.ncc:.3f} edge {q.edge:.3f} gain {q.gain:.4f}")
    assert diff.mean() < 1.5
    assert q.status == "ok", q.reasons


@pytest.mark.slow
def test_flag_calibration_on_known_misregistration() -> None:
    """Flag fires at each known misregistration, not at the registered solution."""
    cases = {"0": {}, "0.5 mm": {"translation_mm": (0.5, 0.0, 0.0)},
             "1 mm": {"translation_mm": (0.0, 1.0, 0.0)},
             "2 mm": {"translation_mm": (0.0, 0.0, 2.0)},
             "1 deg": {"rotation_deg": (1.0, 0.0, 0.0)},
             "2 deg": {"rotation_deg": (0.0, 2.0, 0.0)},
             "5 deg": {"rotation_deg": (0.0, 0.0, 5.0)}}
    pairs = [("patient-positions HFP->HFS", position_image("HFS"), position_image("HFP"),
              position_mask("HFS")),
             ("ms patient01 FLAIR", ms_flair("patient01", "study1"),
              ms_flair("patient01", "study2"), None)]
    for name, f, m, mask in pairs:
        mask = mask if mask is not None else brain_masks(f).brain
        res = register(f, m, mask)
        lab = sitk.LabelShapeStatisticsImageFilter()
        lab.Execute(mask)
        c = lab.GetCentroid(1)
        for case, kw in cases.items():
            q = assess(f, m, perturb(res.transform, c, **kw), mask)
            print(f"{name} {case}: ncc {q.ncc:.3f} edge {q.edge:.3f} gain {q.gain:.4f} {q.status}")
            if case == "0":
                assert not q.flagged, (name, q)
            elif case != "0.5 mm":  # 0.5 mm is reported, at the noise limit of the flag
                assert q.flagged, (name, case, q)
