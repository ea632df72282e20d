"""mri_safety.preprocess.grid: which images go to the 1 mm analysis grid, and that the
resampling keeps world positions (oblique direction cosines included) and intensities."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mri_safety.preprocess.grid import analysis_spacing, to_analysis_grid


def _world_centroid(img: sitk.Image) -> np.ndarray:
    a = sitk.GetArrayFromImage(img).astype(np.float64)  # [k, j, i]
    w = np.clip(a - np.median(a), 0, None)
    kji = np.argwhere(w > 0)
    c = (kji * w[w > 0][:, None]).sum(axis=0) / w.sum()
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[::-1]]))


def test_oblique_fine_image_keeps_world_position_and_intensity() -> None:
    img = sitk.Image([90, 80, 70], sitk.sitkFloat32)
    img.SetSpacing((0.7, 0.65, 0.6))
    img.SetOrigin((-20.0, 13.0, 4.0))
    rot = sitk.VersorTransform((0.3, 0.2, 1.0), 0.4)  # oblique: 23 deg about a skew axis
    img.SetDirection(rot.GetMatrix())
    a = np.full((70, 80, 90), 100.0, np.float32)
    kk, jj, ii = np.indices(a.shape)
    p_idx = np.array([41.3, 37.8, 30.2])  # continuous (i, j, k)
    d = np.sqrt(((ii - p_idx[0]) * 0.7) ** 2 + ((jj - p_idx[1]) * 0.65) ** 2
                + ((kk - p_idx[2]) * 0.6) ** 2)
    a[d <= 2.5] = 300.0
    src = sitk.GetImageFromArray(a)
    src.CopyInformation(img)
    out = to_analysis_grid(src)
    assert out.GetSpacing() == (1.0, 1.0, 1.0)
    assert np.allclose(np.array(out.GetDirection()), np.array(src.GetDirection()))
    p = np.array(src.TransformContinuousIndexToPhysicalPoint(p_idx.tolist()))
    assert np.linalg.norm(_world_centroid(out) - p) < 0.1          # mm
    assert np.linalg.norm(_world_centroid(src) - p) < 0.1
    b = sitk.GetArrayFromImage(out)
    assert abs(float(np.median(b)) - 100.0) < 1e-3                 # flat tissue unchanged
    # the sphere's integral (intensity above background x voxel volume) is kept
    excess_src = float((a - 100.0).sum()) * 0.7 * 0.65 * 0.6
    excess_out = float((b - 100.0).sum()) * 1.0
    assert abs(excess_out / excess_src - 1.0) < 0.05


def test_clinical_images_are_left_on_their_own_grid() -> None:
    for sp in [(0.57, 0.57, 3.3), (1.0, 1.0, 1.0), (0.8, 0.8, 0.8), (0.45, 0.45, 5.0)]:
        assert analysis_spacing(sp) is None
        img = sitk.Image([8, 8, 8], sitk.sitkFloat32)
        img.SetSpacing(sp)
        assert to_analysis_grid(img) is img
    assert analysis_spacing((0.5, 0.5, 0.5)) == (1.0, 1.0, 1.0)
