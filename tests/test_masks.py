"""Template-based brain and intracranial masks on real MS FLAIR (2D, 3-4 mm slices)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import need_data

from mri_safety.preprocess.bias import n4_correct
from mri_safety.preprocess.masks import brain_masks


@pytest.mark.parametrize("patient", ["patient01", "patient03"])
def test_brain_mask_matches_provided_mask(patient: str) -> None:
    d = need_data("longitudinal-ms", patient)
    raw = sitk.ReadImage(str(d / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
    t = sitk.ReadTransform(str(d / "study1_FLAIR_to_common_space.txt"))
    ref = sitk.ReadImage(str(d / "brainmask_common_space.nii.gz"))
    truth = sitk.GetArrayFromImage(
        sitk.Resample(ref, raw, t.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
    m = brain_masks(n4_correct(raw)[0])
    brain = sitk.GetArrayFromImage(m.brain) > 0
    icv = sitk.GetArrayFromImage(m.intracranial) > 0
    dice = 2 * (brain & truth).sum() / (brain.sum() + truth.sum())
    vox_ml = float(np.prod(raw.GetSpacing())) / 1000
    print(f"{patient}: Dice {dice:.3f}; brain {brain.sum() * vox_ml:.0f} ml, intracranial "
          f"{icv.sum() * vox_ml:.0f} ml, provided {truth.sum() * vox_ml:.0f} ml")
    assert dice > 0.85
    assert not (brain & ~icv).any()  # the intracranial mask contains the brain
    # ... and the extra-axial space around it over the vault, where subdural
    # collections appear: the 2 mm shell outside the brain in the upper half of the
    # brain's height (measured 0.989 and 0.999; 0.10-0.11 of the whole shell with
    # the Otsu head mask before 2026-12-06, whose 3D hole fill left the dark
    # skull/CSF gap out). Under the skull base it reaches no further than the
    # template's own intracranial region (`vault_reach`), where the affine fit sits
    # a few mm high on patient01: there it leaves out 0.28 % of the provided brain
    # mask (0.06 % on patient03), a sliver under the orbital gyri and temporal poles.
    ks = np.nonzero(truth.any(axis=(1, 2)))[0]  # array axis 0 is the slice (k) axis
    upper = np.zeros_like(truth)
    upper[(ks.min() + ks.max()) // 2:] = True
    shell = (sitk.GetArrayFromImage(sitk.BinaryDilate(
        m.brain, [max(1, round(2.0 / s)) for s in raw.GetSpacing()])) > 0) & ~brain & upper
    assert (shell & icv).sum() > 0.95 * shell.sum()
    assert (truth & icv).sum() > 0.99 * truth.sum()
    assert 1.1 * brain.sum() < icv.sum() < 1.5 * brain.sum()


def test_vault_reach_bounds_the_masks_under_the_skull_base() -> None:
    """In template (MNI RAS mm) space: past the intracranial boundary the masks may
    reach over the vertex, lateral to the temporal lobe, behind the occipital pole
    and (where the fit is least sure) under the middle cranial fossa, but not
    under the floor of the anterior cranial fossa (ethmoid, orbits)."""
    from mri_safety.preprocess.masks import mni_template, vault_reach

    _, _, icv = mni_template(2)
    reach = vault_reach(2)
    inside, allowed = sitk.GetArrayViewFromImage(icv), sitk.GetArrayViewFromImage(reach)

    def at(a: np.ndarray, ras: tuple[float, float, float]) -> bool:
        i = icv.TransformPhysicalPointToIndex((-ras[0], -ras[1], ras[2]))  # LPS
        return bool(a[i[2], i[1], i[0]])

    def edge(x: float, y: float, z: float, d: tuple[float, float, float]) -> tuple[float, ...]:
        """The last intracranial point walking from (x, y, z) along ``d`` (1 mm steps)."""
        p = np.array([x, y, z])
        while at(inside, tuple(p + d)):
            p = p + d
        return tuple(p)

    for start, d, ok in [((0, -20, 40), (0, 0, 1), True),     # vertex
                         ((-10, 0, -20), (-1, 0, 0), True),   # lateral to the temporal lobe
                         ((0, -60, 10), (0, -1, 0), True),    # behind the occipital pole
                         ((-10, 45, 0), (0, 0, -1), False),   # ethmoid, under the orbital gyri
                         ((-30, 40, 0), (0, 0, -1), False),   # orbit
                         ((4, 20, 0), (0, 0, -1), False),     # under the gyrus rectus
                         ((-40, -30, -10), (0, 0, -1), True)]:  # under the temporal lobe
        p = np.array(edge(*start, np.array(d, float)))
        out = tuple(p + 6.0 * np.array(d))
        assert not at(inside, out), (start, d)
        assert at(allowed, out) is ok, (start, d, out)


@pytest.mark.slow
@pytest.mark.parametrize("position", ["HFS", "HFDL"])
def test_position_t1_brain_mask_is_the_brain_not_the_scalp(position: str) -> None:
    """The 4.8 mm sagittal T1s of the position pairs: the first template fit scales
    the template to the scalp and passes both location tests (2.02-2.41 L; 0.08-0.10
    of its voxels within 4 mm of the head's surface). For a brain volume the masks
    are bounded at ``MAX_BRAIN_ML`` (2 L), which fits such a series again without
    the scalp: 1.36-1.55 L and 0.001-0.006 within 4 mm of the surface on the four
    positions (measured 2026-12-07; looked at by eye at stop 39, sagittal slices of
    all four), and that is the volume the morphometry stage reports."""
    from mri_safety.distance import within_mm
    from mri_safety.evaluation.pairs import convert_dir
    from mri_safety.morphometry.volumes import brain_volumes
    from mri_safety.preprocess.bias import head_mask
    from mri_safety.preprocess.brainmask import MAX_BRAIN_ML, _closed_head, brain_mask

    raw = convert_dir(need_data("dicom", "patient-positions", position))
    img = n4_correct(sitk.Cast(raw, sitk.sitkFloat32))[0]
    ms = brain_mask(img, max_brain_ml=MAX_BRAIN_ML)
    sp = tuple(float(s) for s in img.GetSpacing())
    ml = float(ms.brain.sum()) * float(np.prod(sp)) / 1000
    near = within_mm(~_closed_head(head_mask(img)), 4.0, sp, inclusive=False)
    share = float((ms.brain & near).sum()) / float(ms.brain.sum())
    print(f"{position}: {ml:.0f} mL, {ms.method}; within 4 mm of the head's surface {share:.4f}")
    assert ms.method.endswith("fitted without the scalp)")
    assert 1100 < ml < 0.85 * MAX_BRAIN_ML
    assert share < 0.03
    vol = brain_volumes(raw, "T1w")
    assert vol.brain_mm3 / 1000 == pytest.approx(ml, rel=0.01)
