"""Intensity normalisation between time points inside a mask."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest import need_data

from mri_safety.preprocess.normalise import histogram_match, robust_zscore


def test_histogram_match_undoes_monotone_intensity_change() -> None:
    p = need_data("longitudinal-ms", "patient01", "study1_FLAIR.nii.gz")
    img = sitk.ReadImage(str(p), sitk.sitkFloat32)
    a = sitk.GetArrayFromImage(img).astype(np.float64)
    mask = sitk.GetImageFromArray((a > np.percentile(a, 60)).astype(np.uint8))
    mask.CopyInformation(img)
    changed = sitk.GetImageFromArray((30 + 2.5 * a ** 0.9).astype(np.float32))
    changed.CopyInformation(img)
    out = sitk.GetArrayFromImage(histogram_match(changed, mask, img, mask))
    m = sitk.GetArrayFromImage(mask) > 0
    err = np.abs(out[m] - a[m]) / a[m].std()
    assert np.median(err) < 0.01
    z = sitk.GetArrayFromImage(robust_zscore(img, mask))[m]
    assert abs(np.median(z)) < 1e-6
    z2 = sitk.GetArrayFromImage(robust_zscore(
        sitk.GetImageFromArray((3 * a + 7).astype(np.float32)), mask))[m]
    assert np.allclose(z, z2, atol=1e-3)
