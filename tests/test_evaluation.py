"""Evaluation harness: lesion-wise scoring on constructed maps with known answers,
and the plain subtraction baseline on the real longitudinal MS pairs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_data

from mri_safety.evaluation.scoring import ISSUE_BINS_MM, dice, expert_lesions, froc, score_pair
from mri_safety.evaluation.truth import truth_on_grid


def _truth() -> np.ndarray:
    t = np.zeros((40, 40, 40), np.uint8)
    t[5:8, 5:8, 5:8] = 1  # 27 voxels: lesion A (~3.7 mm at 1 mm voxels)
    t[20:30, 20:30, 20:30] = 1  # 1000 voxels: lesion B (~12 mm)
    t[35, 35, 35] = 1  # 2 voxels: below the 3-voxel expert-lesion minimum
    t[35, 35, 36] = 1
    t[10, 30, 10] = 1  # diagonal neighbours: one 26-connected 3-voxel lesion C
    t[11, 31, 11] = 1
    t[12, 32, 12] = 1
    return t


def test_expert_lesions_26_connected_min_3() -> None:
    lab, n = expert_lesions(_truth())
    assert n == 3
    assert lab[35, 35, 35] == 0
    assert lab[10, 30, 10] == lab[12, 32, 12] != 0


def test_score_pair_known_answer() -> None:
    t = _truth()
    flagged = np.zeros_like(t)
    flagged[9, 9, 9] = 1  # one voxel away (diagonal) from A's corner (7,7,7)? no: 2 away
    flagged[8, 8, 8] = 1  # touches A within one voxel (26-neighbour of 7,7,7)
    flagged[25, 25, 25] = 1  # inside B
    flagged[0:2, 38:40, 0:2] = 1  # far away: false positive
    flagged[36, 36, 37] = 1  # touches the 2-voxel blob only (not a lesion): false positive
    s = score_pair(flagged, t)
    assert s.n_lesions == 3
    assert s.n_found == 2  # A and B; C missed
    # candidates: {(8,8,8),(9,9,9)} form one 26-connected component touching A; B; far; blob
    assert s.n_candidates == 4
    assert s.n_false_positives == 2
    assert s.sensitivity == pytest.approx(2 / 3)
    assert s.precision == pytest.approx(2 / 4)
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s.found_by_bin["0-5"] == (1, 2)  # A found, C missed
    assert s.found_by_bin["10-20"] == (1, 1)
    lab, _ = expert_lesions(t)
    # per lesion in label order: A and B found, C missed
    found = [s.found[lab[x] - 1] for x in ((6, 6, 6), (25, 25, 25), (11, 31, 11))]
    assert found == [True, True, False]
    both = s + s
    assert both.n_pairs == 2 and both.fp_per_pair == 2
    assert both.found == s.found + s.found


def test_score_pair_size_classes_use_the_voxel_volume() -> None:
    """Diameters come from voxel count x voxel volume: with 0.72 x 0.72 x 3 mm voxels
    (the MS common space) lesion A (27 voxels, 41.9 mm3) is 4.3 mm across and C
    (3 voxels, 4.65 mm3) 2.1 mm; B (1000 voxels) 12.6 mm."""
    s = score_pair(np.zeros_like(_truth()), _truth(), voxel_volume_mm3=0.72 * 0.72 * 3.0,
                   size_bins_mm=ISSUE_BINS_MM)
    assert s.found_by_bin == {"0-3": (0, 1), "3-5": (0, 1), "5-10": (0, 0), ">=10": (0, 1)}


def test_candidate_two_voxels_away_is_false_positive() -> None:
    t = np.zeros((20, 20, 20), np.uint8)
    t[5:8, 5:8, 5:8] = 1
    f = np.zeros_like(t)
    f[9, 6, 6] = 1  # gap of one voxel (8,6,6) between lesion and candidate
    s = score_pair(f, t)
    assert (s.n_found, s.n_false_positives) == (0, 1)


def test_truth_on_a_coarse_grid_keeps_an_abnormality_between_slice_centres() -> None:
    """A 3 mm ball lying between two 4 mm slice centres has no voxel by the linear
    rule; it gets the voxel it fills most (found through a moved grid, as the
    previous-visit comparisons map it). An 8 mm ball keeps the linear rule's voxels."""
    import SimpleITK as sitk

    fine = sitk.Image(80, 80, 80, sitk.sitkUInt8)
    fine.SetSpacing((0.5, 0.5, 0.5))
    k, j, i = np.mgrid[:80, :80, :80] * 0.5  # mm, [z, y, x] as SimpleITK arrays
    small = (i - 10.25) ** 2 + (j - 20.25) ** 2 + (k - 29.75) ** 2 <= 1.5 ** 2
    big = (i - 25.0) ** 2 + (j - 20.0) ** 2 + (k - 18.0) ** 2 <= 4.0 ** 2
    lab = sitk.GetImageFromArray((small + 2 * big).astype(np.uint8))
    lab.CopyInformation(fine)
    grid = sitk.Image(20, 20, 10, sitk.sitkFloat32)
    grid.SetSpacing((2.0, 2.0, 4.0))
    grid.SetOrigin((1.0, 1.0, 2.0))
    shift = sitk.TranslationTransform(3, (-1.0, -1.0, -2.0))  # grid points -> label world
    m = truth_on_grid(lab, [1, 2], grid, shift)
    ind = sitk.Cast(lab == 2, sitk.sitkFloat32)
    linear = sitk.GetArrayFromImage(sitk.Resample(ind, grid, shift, sitk.sitkLinear, 0.0))
    assert m[2].sum() > 0 and np.array_equal(m[2], linear.transpose(2, 1, 0) > 0.25)
    # the small ball, z 28.25-31.25 mm in label world = 30.25-33.25 on the grid: between
    # the slice centres at 30 and 34 mm; in plane at (11.25, 21.25) mm of the grid world
    assert np.argwhere(m[1]).tolist() == [[5, 10, 7]]


def test_froc_monotone() -> None:
    t = _truth()
    rng = np.random.default_rng(0)
    score = rng.normal(0, 1, t.shape).astype(np.float32)
    score[t > 0] += 4
    pts = froc(score, t, [2.0, 3.0, 4.0, 5.0, 8.0])
    fps = [p[1] for p in pts]
    sens = [p[2] for p in pts]
    assert sens[0] == 1.0 and sens[-1] == 0.0
    assert all(a >= b for a, b in zip(sens, sens[1:], strict=False))
    assert fps[0] > fps[-1] == 0


def test_dice() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2:6] = True
    b[4:8] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0


@pytest.mark.slow
def test_subtraction_baseline_on_real_ms_pairs() -> None:
    """The plain baseline on the real MS pairs: poor, as measured-baselines.md says."""
    need_data("longitudinal-ms", "patient01")
    from mri_safety.evaluation.pairs import load_ms_pair
    from mri_safety.evaluation.subtraction import subtraction

    total = None
    for p in ("patient01", "patient03"):
        pair = load_ms_pair(p)
        r = subtraction(pair)
        s = score_pair(r.candidates, pair.truth)
        total = s if total is None else total + s
    assert total is not None
    print("MS pairs, plain subtraction:", total.as_dict())
    assert total.n_lesions == 59  # expert change lesions >= 3 voxels (measured-baselines.md)
    assert 0.0 < total.sensitivity < 0.5
    assert total.fp_per_pair > 5


def test_ms_trial_dicom_round_trip(tmp_path) -> None:
    """``dicom_trials.ms_trial`` writes the real MS series as DICOM that the
    project converter reads back voxel for voxel on the raw NIfTI's grid
    (patient03: no study1 T1W, so its baseline has FLAIR and T2W only)."""
    import SimpleITK as sitk

    from mri_safety.evaluation.dicom_trials import ms_trial
    from mri_safety.evaluation.pairs import DATA, convert_dir

    need_data("longitudinal-ms", "patient03")
    trial = ms_trial(tmp_path, "patient03")
    assert sorted(p.name for p in (trial.dicom / "baseline").iterdir()) == ["FLAIR", "T2W"]
    raw = sitk.ReadImage(str(DATA / "longitudinal-ms" / "patient03" / "study1_FLAIR.nii.gz"),
                         sitk.sitkFloat32)
    back = convert_dir(trial.dicom / "baseline" / "FLAIR")
    assert back.GetSize() == raw.GetSize()
    on_raw = sitk.Resample(back, raw, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    assert np.array_equal(sitk.GetArrayFromImage(on_raw), sitk.GetArrayFromImage(raw))


def test_subtraction_baseline_is_deterministic_whatever_the_thread_count() -> None:
    """The plain baseline is the FROC anchor of benchmarks/detect.py: the same pair
    gives the same z-map in a 1- and a 3-thread process (before its registration
    and N4 were pinned to one thread, a real no-change pair gave 72 or 73
    candidates and z differing by up to 3e-3, even between two 2-thread runs)."""
    need_data("dicom", "patient-positions")
    from mri_safety.evaluation.pairs import load_positions_pair
    from mri_safety.evaluation.subtraction import subtraction
    from mri_safety.threads import itk_threads

    pair = load_positions_pair("HFP", "HFDR")
    runs = []
    for n in (1, 3):
        with itk_threads(n):
            runs.append(subtraction(pair, z_thr=5.0, min_voxels=10))
    assert np.array_equal(runs[0].z, runs[1].z)
    assert np.array_equal(runs[0].candidates, runs[1].candidates)
    assert runs[0].transform.GetParameters() == runs[1].transform.GetParameters()
