"""mri_safety.distance against scipy's float64 Euclidean distance transform: every
dilation / erosion decision identical (ties included), distances equal to float32
precision, whatever ITK's thread count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from mri_safety.change.masks import dilate_mm, erode_mm
from mri_safety.distance import distance_to_mm, lattice_cut, within_mm
from mri_safety.threads import itk_threads

# spacings as they come out of NIfTI headers (float32 -> float64), with ties:
# 3 x 0.6666667 is just over 2 mm, 2 x 1.0 is exactly 2 mm, 4 x 0.5 exactly 2 mm
SPACINGS = [
    (1.0, 1.0, 1.0),
    tuple(float(np.float32(s)) for s in (0.6999878, 0.6666667, 0.6666667)),
    tuple(float(np.float32(s)) for s in (0.71875, 0.71875, 4.0)),
    tuple(float(np.float32(s)) for s in (0.5729163, 0.5729169, 3.2999961)),
    (0.5, 0.5, 3.0),
]


def _blobs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Random smooth blobs touching the image border, about 30 % of the voxels."""
    rng = np.random.default_rng(seed)
    a = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    return np.asarray(a > np.percentile(a, 70))


@pytest.mark.parametrize("sp", SPACINGS)
def test_dilate_erode_identical_to_scipy(sp: tuple[float, float, float]) -> None:
    m = _blobs((48, 40, 24), seed=3)
    d_out = ndi.distance_transform_edt(~m, sampling=sp)
    d_in = ndi.distance_transform_edt(m, sampling=sp)
    for r in (0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0):
        np.testing.assert_array_equal(dilate_mm(m, r, sp), d_out <= r, err_msg=f"dilate {r} {sp}")
        np.testing.assert_array_equal(erode_mm(m, r, sp), d_in > r, err_msg=f"erode {r} {sp}")
        np.testing.assert_array_equal(within_mm(m, r, sp, inclusive=False), d_out < r,
                                      err_msg=f"strict {r} {sp}")
    np.testing.assert_allclose(distance_to_mm(~m, sp), d_in, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(distance_to_mm(m, sp), d_out, rtol=2e-6, atol=1e-6)


def test_ties_are_decided_as_scipy_does() -> None:
    """A voxel exactly 2 mm away (2 x 1 mm) is within 2 mm; one 3 x 0.6666667 mm
    (= 2.00000006 mm) away is not, though float32 rounds that distance to 2.0."""
    m = np.zeros((9, 9, 3), bool)
    m[4, 4, 1] = True
    sp = (float(np.float32(0.6666667)), 1.0, 1.0)
    got = dilate_mm(m, 2.0, sp)
    assert got[4, 6, 1] and not got[4, 7, 1]     # 2 x 1.0 mm: in; 3 x 1.0: out
    assert not got[7, 4, 1] and got[6, 4, 1]     # 3 x 0.6666667 mm: out
    np.testing.assert_array_equal(got, ndi.distance_transform_edt(~m, sampling=sp) <= 2.0)


def test_degenerate_spacing_falls_back_to_float64() -> None:
    """Two attainable distances within float32 precision of each other on either
    side of the radius: no cut exists, the float64 path decides (same answer)."""
    sp = (1.0, float(np.float32(0.6666667)), 1.0)   # 2 x 1.0 = 2.0 in, 3 x 0.6666667 out
    assert lattice_cut(2.0, sp) is None
    m = _blobs((30, 30, 12), seed=5)
    np.testing.assert_array_equal(dilate_mm(m, 2.0, sp),
                                  ndi.distance_transform_edt(~m, sampling=sp) <= 2.0)


def test_thread_count_does_not_change_distances() -> None:
    m = _blobs((64, 48, 32), seed=7)
    sp = SPACINGS[1]
    with itk_threads(1):
        one = distance_to_mm(m, sp)
    with itk_threads(2):
        two = distance_to_mm(m, sp)
    np.testing.assert_array_equal(one, two)


def test_empty_and_full_masks() -> None:
    z = np.zeros((6, 5, 4), bool)
    assert not dilate_mm(z, 3.0, (1.0, 1.0, 1.0)).any()
    assert np.isinf(distance_to_mm(z, (1.0, 1.0, 1.0))).all()
    # the image border is not background: a full mask is not eroded
    assert erode_mm(~z, 1.0, (1.0, 1.0, 1.0)).all()


def test_block_robust_sd_in_slabs_equals_per_block_median() -> None:
    """The slab-wise block statistic of ``local_robust_sd`` against a plain loop over
    blocks (a volume large enough for several slabs, partial blocks at the far edges)."""
    from mri_safety.change.zmap import MAD_TO_SD, _block_mad_sd

    rng = np.random.default_rng(4)
    a = np.abs(rng.standard_t(3, size=(250, 131, 101))).astype(np.float32)
    m = rng.random(a.shape) > 0.4
    m[:, :30] = False                       # empty blocks
    f = [6, 6, 6]
    blk, valid, shp = _block_mad_sd(a, m, f)
    assert shp == (42, 22, 17)
    for i, j, k in [(0, 0, 0), (3, 10, 5), (41, 21, 16), (20, 4, 16), (41, 0, 3)]:
        sl = tuple(slice(n * s, (n + 1) * s) for n, s in zip((i, j, k), f, strict=True))
        v = a[sl][m[sl]].astype(np.float64)
        ok = v.size >= max(4, 0.25 * 216)
        assert valid[i, j, k] == ok
        if ok:
            assert blk[i, j, k] == MAD_TO_SD * np.median(v)
