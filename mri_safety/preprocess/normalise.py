"""Intensity normalisation between time points, computed inside a mask.

Images are SimpleITK images on the same grid as their masks (LPS+, world mm);
normalisation is voxel-wise, so geometry is untouched.

* :func:`robust_zscore` maps each image to ``(x - median) / (1.4826 * MAD)`` of
  the voxels inside the mask: insensitive to lesions and to the tails
  (fat, vessels) that move a mean/SD.
* :func:`histogram_match` maps the follow-up's intensities so that its
  quantiles inside its mask equal the baseline's quantiles inside the baseline
  mask (piecewise-linear quantile mapping on ``n_quantiles`` points between the
  ``lo``/``hi`` percentiles, linear extrapolation outside). Written with numpy
  because SimpleITK's HistogramMatchingImageFilter cannot restrict the
  histograms to a mask (it only excludes values below the mean).

Both are deterministic (no sampling). Voxels outside the mask are transformed
with the same mapping.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _inside(image: sitk.Image, mask: sitk.Image) -> np.ndarray:
    a = sitk.GetArrayViewFromImage(image)
    m = sitk.GetArrayViewFromImage(mask) > 0
    if a.shape != m.shape:
        raise ValueError("image and mask grids differ")
    if not m.any():
        raise ValueError("mask is empty")
    return np.asarray(a[m], dtype=np.float64)


def _from_array(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.CopyInformation(like)
    return out


def robust_zscore(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """Return ``(image - median) / (1.4826 * MAD)`` over ``mask`` (float32, unitless)."""
    v = _inside(image, mask)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    if mad <= 0:
        raise ValueError("robust_zscore: intensities inside the mask are constant")
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    return _from_array((a - med) / mad, image)


def histogram_match(moving: sitk.Image, moving_mask: sitk.Image, reference: sitk.Image,
                    reference_mask: sitk.Image, n_quantiles: int = 256, lo: float = 0.5,
                    hi: float = 99.5) -> sitk.Image:
    """Map ``moving`` intensities onto ``reference``'s scale by quantile matching in the masks.

    Returns float32 on the moving grid. ``lo``/``hi`` are the percentiles of the
    matched range; beyond them the mapping continues with the slope of the end
    segments.
    """
    q = np.linspace(lo, hi, n_quantiles)
    src = np.percentile(_inside(moving, moving_mask), q)
    dst = np.percentile(_inside(reference, reference_mask), q)
    # make the source knots strictly increasing (flat histogram parts repeat values)
    src = src + np.arange(n_quantiles) * 1e-9 * max(1.0, float(np.abs(src).max()))
    a = sitk.GetArrayFromImage(moving).astype(np.float64)
    out = np.interp(a, src, dst)
    s_lo = (dst[1] - dst[0]) / (src[1] - src[0])
    s_hi = (dst[-1] - dst[-2]) / (src[-1] - src[-2])
    out = np.where(a < src[0], dst[0] + (a - src[0]) * s_lo, out)
    out = np.where(a > src[-1], dst[-1] + (a - src[-1]) * s_hi, out)
    return _from_array(out, moving)
