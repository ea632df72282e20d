"""Morphometry: cord CSA and ventricle volume on constructed images with known
truth, and cord CSA on the real spine t2 against its manual segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from mri_safety.morphometry import cord_csa_per_slice, mask_volume_mm3, ventricle_mask


def _tilted_cylinder(shape, a_mm, b_mm, tilt_deg, spacing):
    """Elliptic cylinder (semi-axes a along P, b along L, perpendicular to its
    axis) whose axis runs along S tilted by ``tilt_deg`` towards P; arrays [S, P, L]."""
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                             indexing="ij")
    t = np.radians(tilt_deg)
    c = np.array(shape) * np.array(spacing) / 2.0
    z, y, x = zz - c[0], yy - c[1], xx - c[2]
    # coordinate across the axis within the (S, P) plane, perpendicular to the axis
    u = y * np.cos(t) - z * np.sin(t)
    return (u / a_mm) ** 2 + (x / b_mm) ** 2 <= 1.0


@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_cord_csa_of_tilted_elliptic_cylinder(tilt):
    spacing = (1.0, 0.25, 0.25)
    m = _tilted_cylinder((40, 120, 120), 3.5, 6.0, tilt, spacing)
    csa = cord_csa_per_slice(m, spacing)
    truth = np.pi * 3.5 * 6.0
    inner = csa[8:-8]
    assert np.all(np.isfinite(inner))
    assert abs(np.median(inner) / truth - 1) < 0.03, (np.median(inner), truth)
    # without the angle correction the slice area overestimates by 1 / cos(tilt)
    raw = m[20].sum() * spacing[1] * spacing[2]
    assert abs(raw / truth - 1 / np.cos(np.radians(tilt))) < 0.03


def test_cord_csa_empty_slices_are_nan():
    m = np.zeros((10, 20, 20), bool)
    m[3:7, 8:12, 8:12] = True
    csa = cord_csa_per_slice(m, (1.0, 1.0, 1.0))
    assert np.isnan(csa[:3]).all() and np.isnan(csa[7:]).all()
    assert np.allclose(csa[3:7], 16.0)


def test_ventricle_volume_on_constructed_brain():
    """Ellipsoid 'brain' (tissue 100), two dark ventricles near the centre of
    known volume, dark sulcal CSF at the surface (must be excluded), noise."""
    rng = np.random.default_rng(0)
    spacing = (1.5, 1.0, 1.0)
    shape = (90, 160, 130)
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)),
                             indexing="ij")
    c = np.array(shape) * np.array(spacing) / 2.0
    z, y, x = zz - c[0], yy - c[1], xx - c[2]
    brain = (z / 55) ** 2 + (y / 75) ** 2 + (x / 60) ** 2 <= 1
    img = np.where(brain, 100.0, 0.0)
    vents = np.zeros(shape, bool)
    for side in (-1, 1):
        vents |= (z / 12) ** 2 + (y / 25) ** 2 + ((x - side * 9) / 5) ** 2 <= 1
    img[vents] = 20.0
    r = np.sqrt((z / 55) ** 2 + (y / 75) ** 2 + (x / 60) ** 2)
    sulci = brain & (r > 0.95) & (np.sin(y / 3.0) > 0.3)
    img[sulci] = 20.0
    img += rng.normal(0, 4.0, shape)
    truth = mask_volume_mm3(vents, spacing)
    assert truth == pytest.approx(2 * 4 / 3 * np.pi * 12 * 25 * 5, rel=0.03)
    got = ventricle_mask(img, brain, spacing, "dark")
    assert not (got & sulci).any()
    assert mask_volume_mm3(got, spacing) == pytest.approx(truth, rel=0.05)
    # bright CSF (T2w): same answer on the inverted contrast
    got2 = ventricle_mask(np.where(brain, 120.0 - img, 0.0), brain, spacing, "bright")
    assert mask_volume_mm3(got2, spacing) == pytest.approx(truth, rel=0.05)


def test_ventricle_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        ventricle_mask(np.ones((5, 5, 5)), np.zeros((5, 5, 5), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        ventricle_mask(np.ones((5, 5, 5)), np.ones((5, 5, 4), bool), (1.0, 1.0, 1.0))


@pytest.mark.slow
def test_cord_csa_c2c3_on_real_spine_t2(data_dir):
    """Our C2-C3 CSA vs the manual cord segmentation's CSA on the same slices."""
    import SimpleITK as sitk

    from mri_safety.morphometry import cord_area
    from mri_safety.preprocess.spine import to_work_grid

    d = data_dir / "spine" / "t2"
    img = sitk.ReadImage(str(d / "t2.nii.gz"), sitk.sitkFloat32)
    res = cord_area(img, "t2")
    assert res.csa_c2c3_mm2 is not None and res.n_slices_c2c3 >= 5
    work = to_work_grid(img, 1.0)
    man = sitk.ReadImage(str(d / "t2_seg-manual.nii.gz"), sitk.sitkUInt8)
    mw = sitk.GetArrayFromImage(sitk.Resample(man, work, sitk.Transform(),
                                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    truth = float(np.nanmean(cord_csa_per_slice(mw, (1.0, 1.0, 1.0))[res.slices_c2c3]))
    print(f"CSA C2-C3 ours {res.csa_c2c3_mm2:.1f} mm2, manual {truth:.1f} mm2 "
          f"({res.n_slices_c2c3} slices, levels {res.levels})")
    assert res.csa_c2c3_mm2 == pytest.approx(truth, rel=0.10)


@pytest.mark.slow
def test_fine_3d_t1_is_measured_on_the_analysis_grid():
    """The real 0.7 mm 3D T1 (40 M voxels) is measured on the 1 mm analysis grid:
    brain and ventricle volumes within 2 % of the native-grid measurement
    (measured 2026-12-05: -0.8 % and -1.2 %; 7 s and 1.2 GB instead of 18 s and
    2.5 GB, which is over a 2 GiB pipeline worker), and a 1 mm image is left on its
    own grid (the same figures either way)."""
    from conftest import need_data

    from mri_safety.morphometry.volumes import brain_volumes
    from mri_safety.preprocess.grid import to_analysis_grid
    from mri_safety.register.transforms import load_image

    img = load_image(need_data("dicom", "brain-t1-3d", "ref", "anat-T1w.nii.gz"))
    assert np.prod(img.GetSpacing()) < 0.5
    grid = brain_volumes(img, "T1w")
    native = brain_volumes(img, "T1w", analysis_grid=False)
    assert abs(grid.brain_mm3 / native.brain_mm3 - 1) < 0.02, (grid, native)
    assert abs(grid.ventricles_mm3 / native.ventricles_mm3 - 1) < 0.02, (grid, native)
    one_mm = to_analysis_grid(img)
    assert brain_volumes(one_mm, "T1w") == brain_volumes(one_mm, "T1w", analysis_grid=False)


@pytest.mark.slow
@pytest.mark.parametrize("patient,series,contrast", [("patient01", "study1_T2W", "T2w"),
                                                     ("patient01", "study1_T1W", "T1w"),
                                                     ("patient03", "study1_T2W", "T2w")])
def test_brain_volume_of_thick_t2w_and_t1w_is_not_the_scalp(patient, series, contrast):
    """The brain volume takes its template fit by the acceptance tests of change
    detection (:func:`mri_safety.preprocess.brainmask.brain_mask`), so an
    over-scaled fit (the template scaled to the scalp: the first fit on the MS T2W
    and T1W) is fitted again without the scalp. Against the data set's expert brain
    mask (independent of our code): measured 2026-12-07, 1.08, 0.93 and 1.21 x the
    expert volume, and the T2W 1.10 and 1.01 x the FLAIR of the same session; with
    the first fit, as until then, 2.26, 2.01 and 1.81 x."""
    import SimpleITK as sitk
    from conftest import need_data

    from mri_safety.morphometry.volumes import brain_volumes
    from mri_safety.register.transforms import load_image

    folder = need_data("longitudinal-ms", patient)
    ref = sitk.ReadImage(str(folder / "brainmask_common_space.nii.gz"))
    expert_mm3 = float((sitk.GetArrayFromImage(ref) > 0).sum() * np.prod(ref.GetSpacing()))
    vol = brain_volumes(load_image(folder / f"{series}.nii.gz"), contrast)
    flair = brain_volumes(load_image(folder / "study1_FLAIR.nii.gz"), "FLAIR")
    print(f"{patient} {series}: {vol.brain_mm3 / 1000:.0f} ml, FLAIR "
          f"{flair.brain_mm3 / 1000:.0f} ml, expert {expert_mm3 / 1000:.0f} ml ({vol.method})")
    assert 0.8 < vol.brain_mm3 / expert_mm3 < 1.3
    assert abs(vol.brain_mm3 / flair.brain_mm3 - 1) < 0.15
    assert "without the scalp" in vol.method
