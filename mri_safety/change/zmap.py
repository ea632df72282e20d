"""Noise-normalised difference (z) maps.

Arrays are numpy ``[i, j, k]`` on one voxel grid (the baseline's), with the
voxel spacing in mm given per axis. The noise of a real follow-up difference is
not the scanner's thermal noise alone: residual misregistration, interpolation
and different slice profiles make differences proportional to the local
intensity gradient. The model used here (LST-long style "noise of FLAIR change
in normal-appearing tissue", extended with an edge term) is

    var(d | x) = s0**2 + (delta * g(x))**2

where ``s0`` is the robust SD of the difference in flat tissue (low gradient),
``g`` is the local gradient magnitude (intensity units per mm) and ``delta``
(mm) the effective residual misregistration, estimated from the difference
itself by robust regression of the binned variance on ``g**2``. The z-map is
``d / sqrt(var)``. Nothing here uses ground truth; on pure Gaussian noise the
z-map is standard normal (tested).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

MAD_TO_SD = 1.482602218505602


def robust_sd(x: NDArray[np.floating]) -> float:
    """1.4826 x median absolute deviation from the median (robust SD)."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return float("nan")
    return float(MAD_TO_SD * np.median(np.abs(x - np.median(x))))


def match_intensity(moving: NDArray[np.floating], fixed: NDArray[np.floating],
                    mask: NDArray[np.bool_], outlier_sd: float = 5.0,
                    quantiles: NDArray[np.floating] | None = None) -> tuple[float, float]:
    """Line ``fixed ~ slope * moving + intercept`` matching the intensity
    histograms of the two images inside ``mask`` (voxels of the same grid).

    1. Theil-Sen line (median of pairwise slopes) through the quantile pairs
       5, 10, ..., 95 % of the mask;
    2. voxels whose change after that line lies more than ``outlier_sd``
       robust SDs from the median change are left out of BOTH images;
    3. least-squares line through the quantile pairs of the voxels kept.

    Why: a true change covering a few % of the tissue (grown ventricles, a
    large infarct) shifts every quantile of one image against the other's.
    A line through the quantiles of all voxels then mis-scales the tissue,
    which raises the noise estimate and hides changes elsewhere
    (tests/test_change.py, ventricle phantom: 4 % of the tissue turned to CSF
    raised the noise SD 6-fold with a least-squares line). Step 1 is robust
    enough to find the changed voxels; step 3 matches the histograms of the
    same unchanged voxels, for which the quantile pairs correspond again.

    >>> rng = np.random.default_rng(0)
    >>> fixed = rng.normal(1.0, 0.1, 20000)
    >>> moving = 2.0 * fixed + 0.5              # the same tissue, another gain
    >>> [round(v, 3) for v in match_intensity(moving, fixed, np.ones(20000, bool))]
    [0.5, -0.25]
    >>> moving[:800] = 0.2                      # 4 % of it became CSF
    >>> [round(v, 3) for v in match_intensity(moving, fixed, np.ones(20000, bool))]
    [0.5, -0.25]
    """
    from scipy.stats import theilslopes

    qs = np.linspace(5, 95, 19) if quantiles is None else np.asarray(quantiles, float)
    m = np.asarray(mask, bool)
    mov, fix = np.asarray(moving, np.float64), np.asarray(fixed, np.float64)
    slope, icpt, _, _ = theilslopes(np.percentile(fix[m], qs), np.percentile(mov[m], qs))
    r = (slope * mov + icpt - fix)[m]
    med, sd = float(np.median(r)), robust_sd(r)
    keep = np.abs(r - med) <= outlier_sd * sd
    if sd > 0 and keep.sum() >= 0.5 * r.size:
        a, c = np.polyfit(np.percentile(mov[m][keep], qs), np.percentile(fix[m][keep], qs), 1)
        slope, icpt = float(a), float(c)
    return float(slope), float(icpt)


def gradient_magnitude(img: NDArray[np.floating], spacing_mm: tuple[float, ...]
                       ) -> NDArray[np.float32]:
    """|grad img| in intensity units per mm (central differences, voxel spacing in mm)."""
    g = np.gradient(np.asarray(img, np.float32), *[float(s) for s in spacing_mm])
    return np.sqrt(sum(gi.astype(np.float32) ** 2 for gi in g)).astype(np.float32)


@dataclass(frozen=True)
class NoiseModel:
    """``var(d) = s0**2 + (delta_mm * g)**2``; ``s0`` in image units, ``delta_mm`` in mm."""

    s0: float
    delta_mm: float

    def sd(self, grad: NDArray[np.floating]) -> NDArray[np.float32]:
        return np.sqrt(self.s0 ** 2 + (self.delta_mm * np.asarray(grad, np.float32)) ** 2
                       ).astype(np.float32)


def noise_model(diff: NDArray[np.floating], grad: NDArray[np.floating], mask: NDArray[np.bool_],
                delta_mm: float | None = None, n_bins: int = 20) -> NoiseModel:
    """Estimate the noise model from the difference image within ``mask``.

    ``s0``: robust SD of ``diff`` where ``grad`` is in the lowest 30 % inside the
    mask. ``delta_mm`` (when not given): median over the upper half of
    ``n_bins`` gradient-quantile bins of ``sqrt(max(0, robust_var - s0**2)) / g``.
    Robust statistics make a few true lesions irrelevant to the estimate.
    """
    m = np.asarray(mask, bool)
    if m.sum() < 100:
        raise ValueError("noise_model: fewer than 100 voxels in the tissue mask")
    d = np.asarray(diff, np.float64)[m]
    g = np.asarray(grad, np.float64)[m]
    flat = g <= np.quantile(g, 0.3)
    s0 = robust_sd(d[flat])
    if not np.isfinite(s0) or s0 <= 0:
        s0 = max(robust_sd(d), 1e-6)
    if delta_mm is not None:
        return NoiseModel(float(s0), float(delta_mm))
    edges = np.quantile(g, np.linspace(0.5, 1.0, n_bins // 2 + 1))
    est = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (g >= lo) & (g <= hi)
        if sel.sum() < 50:
            continue
        var = robust_sd(d[sel]) ** 2
        gm = float(np.median(g[sel]))
        if gm > 0:
            est.append(np.sqrt(max(0.0, var - s0 ** 2)) / gm)
    delta = float(np.median(est)) if est else 0.0
    return NoiseModel(float(s0), delta)


def remove_low_frequency(diff: NDArray[np.floating], mask: NDArray[np.bool_],
                         window_mm: float, spacing_mm: tuple[float, ...],
                         block_mm: float = 3.0) -> NDArray[np.float32]:
    """Subtract a robust local offset of ``diff`` (residual bias / coil-sensitivity change).

    The difference is averaged inside ``mask`` over blocks of ~``block_mm``,
    median-filtered over ``window_mm`` on the block grid (a median ignores focal
    changes smaller than about half the window, so lesions up to ~``window_mm / 2``
    keep their contrast) and interpolated back (linear). Outside the mask's
    reach the offset is 0.
    """
    d = np.asarray(diff, np.float32)
    m = np.asarray(mask, bool)
    f = [max(1, int(round(block_mm / float(s)))) for s in spacing_mm]
    shp = [int(np.ceil(n / k)) for n, k in zip(d.shape, f, strict=True)]
    pad = [(0, s * k - n) for s, k, n in zip(shp, f, d.shape, strict=True)]
    dp = np.pad(np.where(m, d, 0.0), pad).reshape(shp[0], f[0], shp[1], f[1], shp[2], f[2])
    mp = np.pad(m.astype(np.float32), pad).reshape(dp.shape)
    num = dp.sum(axis=(1, 3, 5))
    den = mp.sum(axis=(1, 3, 5))
    valid = den >= 0.25 * float(np.prod(f))
    blk = np.where(valid, num / np.maximum(den, 1), np.nan)
    size = [max(3, int(round(window_mm / (k * float(s)))) | 1) for k, s in zip(f, spacing_mm,
                                                                              strict=True)]
    # nan-aware median: fill invalid blocks with the global median first
    filled = np.where(valid, blk, float(np.nanmedian(blk)) if valid.any() else 0.0)
    med = ndi.median_filter(filled, size=size, mode="nearest")
    med = np.where(valid, med, 0.0)
    off = ndi.zoom(med, [n / s for n, s in zip(d.shape, shp, strict=True)], order=1,
                   mode="nearest", grid_mode=True)[: d.shape[0], : d.shape[1], : d.shape[2]]
    return (d - off.astype(np.float32)).astype(np.float32)


def lesion_level(base: NDArray[np.floating], tissue: NDArray[np.bool_], ratio: float,
                 sigma_mm: float, spacing_mm: tuple[float, ...], sign: int = 1
                 ) -> NDArray[np.float32]:
    """Per-voxel level a follow-up must reach to be hyperintense, lesion-like
    (``sign`` = +1), or to be a hypointense focus (``sign`` = -1, see below).

    ``ratio`` x the LOCAL normal tissue intensity, never above ``ratio`` x the
    tissue median (``base`` is normalised so that median = 1): ``local`` is the
    Gaussian mean (sigma ``sigma_mm``, world mm) of ``base`` over normal
    ``tissue``, the voxels within ``[1 / ratio, ratio)`` x the median
    (normalised convolution: lesions, and CSF or its partial volume at the
    ventricle and sulcal edges, do not pull it), and the level is
    ``ratio * min(1, local)``, so between 1 and ``ratio`` x the median. A lesion
    in white matter darker than the tissue median (T2w, FLAIR at some field
    strengths) is judged against that white matter, as a reader does, instead
    of against the grey-matter-weighted median; the level is never raised above
    the global rule. Where normal tissue is too sparse to say (weight < 0.1),
    the global level ``ratio`` holds. ``sigma_mm <= 0`` gives the global level
    everywhere.

    ``sign`` = -1 is the mirror for dark foci (T2*w/SWI): the follow-up must
    fall to ``max(1, local) / ratio``, i.e. below
    ``1 / ratio`` x the local normal tissue where that is brighter than the
    median (deep and cortical grey matter on T2*w), never above the median:
    a microbleed in grey matter is judged against that grey matter.

    >>> b = np.ones((40, 20, 20), np.float32); b[20:] = 0.88   # darker half
    >>> b[38:] = 0.3                                             # CSF: not a reference
    >>> lv = lesion_level(b, np.ones(b.shape, bool), 1.2, 3.0, (1.0, 1.0, 1.0))
    >>> [round(float(lv[i, 10, 10]), 3) for i in (5, 30, 39)]
    [1.2, 1.056, 1.056]
    >>> b = np.ones((40, 20, 20), np.float32); b[20:] = 1.15   # brighter half
    >>> dl = lesion_level(b, np.ones(b.shape, bool), 1.2, 3.0, (1.0, 1.0, 1.0), sign=-1)
    >>> [round(float(dl[i, 10, 10]), 3) for i in (5, 30)]
    [0.833, 0.958]
    """
    return level_from_local(local_tissue(base, tissue, ratio, sigma_mm, spacing_mm), ratio,
                            sign)


def level_from_local(local: NDArray[np.floating], ratio: float, sign: int = 1
                     ) -> NDArray[np.float32]:
    """:func:`lesion_level` from an already computed :func:`local_tissue` map."""
    if sign not in (1, -1):
        raise ValueError("lesion_level: sign must be +1 or -1")
    if sign < 0:
        return (np.maximum(1.0, local) / ratio).astype(np.float32)
    return (ratio * np.minimum(1.0, local)).astype(np.float32)


def local_tissue(base: NDArray[np.floating], tissue: NDArray[np.bool_], ratio: float,
                 sigma_mm: float, spacing_mm: tuple[float, ...]) -> NDArray[np.float32]:
    """Local normal tissue intensity around each voxel (``base`` normalised so
    that the tissue median = 1): the Gaussian mean (sigma ``sigma_mm``, world
    mm; ``spacing_mm`` in array axis order) of ``base`` over the ``tissue``
    voxels within ``[1 / ratio, ratio)`` x the median (normalised convolution,
    so lesions and CSF or its partial volume do not pull it). 1 (the median)
    where such tissue is too sparse to say (weight < 0.1) and everywhere when
    ``sigma_mm <= 0``. What :func:`lesion_level` multiplies.

    >>> b = np.ones((40, 20, 20), np.float32); b[20:] = 0.88; b[38:] = 0.3
    >>> loc = local_tissue(b, np.ones(b.shape, bool), 1.2, 3.0, (1.0, 1.0, 1.0))
    >>> [round(float(loc[i, 10, 10]), 3) for i in (5, 30, 39)]
    [1.0, 0.88, 0.88]
    """
    if sigma_mm <= 0:
        return np.ones(base.shape, np.float32)
    ref = tissue & (base < ratio) & (base >= 1.0 / ratio)
    sig = [sigma_mm / float(s) for s in spacing_mm]
    w = ndi.gaussian_filter(ref.astype(np.float32), sig, mode="constant")
    num = ndi.gaussian_filter(np.where(ref, base, 0.0).astype(np.float32), sig, mode="constant")
    return np.where(w >= 0.1, num / np.maximum(w, 1e-6), 1.0).astype(np.float32)


def _block_mad_sd(a: NDArray[np.floating], m: NDArray[np.bool_], f: list[int]
                  ) -> tuple[NDArray[np.float64], NDArray[np.bool_], tuple[int, ...]]:
    """``MAD_TO_SD x median`` of ``a`` over the voxels of ``m`` in each block of ``f``
    voxels, and whether the block has enough of them (>= 4 and >= a quarter).

    The blocks are built one slab of block rows at a time (float64, as a whole):
    a 0.7 mm 3D head in one piece took about 1.5 GB of temporaries; the values are
    the same."""
    shp = tuple(int(np.ceil(n / k)) for n, k in zip(a.shape, f, strict=True))
    blk = np.full(shp, np.nan)
    valid = np.zeros(shp, bool)
    rows = max(1, 4_000_000 // max(1, f[0] * a.shape[1] * a.shape[2]))  # ~32 MB per slab
    for s0 in range(0, shp[0], rows):
        s1 = min(shp[0], s0 + rows)
        sub = slice(s0 * f[0], min(a.shape[0], s1 * f[0]))
        part = (s1 - s0, shp[1], shp[2])
        pad = [(0, p * k - n) for p, k, n in zip(part, f, a[sub].shape, strict=True)]
        x = np.pad(np.where(m[sub], np.asarray(a[sub], np.float64), np.nan), pad,
                   constant_values=np.nan)
        x = x.reshape(part[0], f[0], part[1], f[1], part[2], f[2]).transpose(0, 2, 4, 1, 3, 5)
        x = x.reshape(*part, -1)
        cnt = np.sum(np.isfinite(x), axis=-1)
        ok = cnt >= max(4, 0.25 * x.shape[-1])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks are masked below
            blk[s0:s1] = MAD_TO_SD * np.nanmedian(np.where(ok[..., None], x, np.nan), axis=-1)
        valid[s0:s1] = ok
    return blk, valid, shp


def local_robust_sd(diff: NDArray[np.floating], mask: NDArray[np.bool_], window_mm: float,
                    spacing_mm: tuple[float, ...], block_mm: float = 4.0,
                    extend_edge: bool = False) -> NDArray[np.float32]:
    """Spatially varying robust SD of ``diff`` (the local noise of change).

    ``1.4826 x median |diff|`` per block of ~``block_mm`` inside ``mask``, then
    the median of the block values over ``window_mm`` (robust to a focal change
    that fills fewer than half of the window's blocks), interpolated back.
    Regions where real scan-rescan differences are large (slab edges, partial
    volume of thick slices cutting the cortex tangentially, flow) get a larger SD.

    Blocks with too few ``mask`` voxels (outside the mask, or at its edge):
    - ``extend_edge=False``: left out of the window median (a block whose window
      holds no valid block takes the nearest value). A change lining the mask
      edge then counts once, among the valid blocks of each window.
    - ``extend_edge=True``: take the nearest valid block's value first, so the
      edge layer holds most of each window at the mask edge and the edge's own
      noise (partial volume at the surface) is not diluted by the quieter
      interior; but a change lining the edge (a new extra-axial collection)
      then sets its own noise: a synthetic subdural collection against the
      previous visit had a block SD of 0.33 against 0.04 x the tissue median
      over the brain, and its peak z was 5.5.

    >>> rng = np.random.default_rng(0)
    >>> d = rng.normal(0.0, 1.0, (40, 40, 40))
    >>> m = np.zeros(d.shape, bool); m[:, :20] = True
    >>> d[:, 16:20] += 20.0   # a bright sheet lining the edge of the mask
    >>> sd = local_robust_sd(d, m, 20.0, (1.0, 1.0, 1.0))
    >>> round(float(np.median(sd[:, 16:20])), 1), round(float(np.median(sd[:, :12])), 1)
    (2.0, 1.0)
    >>> sd = local_robust_sd(d, m, 20.0, (1.0, 1.0, 1.0), extend_edge=True)
    >>> round(float(np.median(sd[:, 16:20])), 1)   # the sheet is its own noise
    27.7
    """
    m = np.asarray(mask, bool)
    blocks = _sd_blocks(diff, m, window_mm, spacing_mm, block_mm)
    if blocks is None:
        return np.zeros(m.shape, np.float32)
    blk, valid, shp, size = blocks
    return _to_voxels(_window_median(blk, valid, size, extend_edge), m.shape, shp)


def signed_local_robust_sd(diff: NDArray[np.floating], mask: NDArray[np.bool_],
                           window_mm: float, spacing_mm: tuple[float, ...],
                           block_mm: float = 4.0) -> NDArray[np.float32]:
    """:func:`local_robust_sd` by the sign of ``diff``: where ``diff > 0`` with
    ``extend_edge=False`` (a new collection lining the mask edge does not set its
    own noise), elsewhere with ``extend_edge=True`` (the edge layer's partial-volume
    noise, which holds CSF-interface dark spots on T2*w); the block statistics are
    computed once for both."""
    m = np.asarray(mask, bool)
    blocks = _sd_blocks(diff, m, window_mm, spacing_mm, block_mm)
    if blocks is None:
        return np.zeros(m.shape, np.float32)
    blk, valid, shp, size = blocks
    inc = _to_voxels(_window_median(blk, valid, size, False), m.shape, shp)
    dec = _to_voxels(_window_median(blk, valid, size, True), m.shape, shp)
    return np.where(np.asarray(diff) > 0, inc, dec).astype(np.float32)


_Blocks = tuple[NDArray[np.float64], NDArray[np.bool_], tuple[int, ...], list[int]]


def _sd_blocks(diff: NDArray[np.floating], m: NDArray[np.bool_], window_mm: float,
               spacing_mm: tuple[float, ...], block_mm: float) -> _Blocks | None:
    """Block SDs, their validity, the block grid's shape and the window in blocks
    (None when no block is valid)."""
    f = [max(1, int(round(block_mm / float(s)))) for s in spacing_mm]
    blk, valid, shp = _block_mad_sd(np.abs(np.asarray(diff)), m, f)
    if not valid.any():
        return None
    size = [max(3, int(round(window_mm / (k * float(s)))) | 1) for k, s in zip(f, spacing_mm,
                                                                              strict=True)]
    return blk, valid, shp, size


def _window_median(blk: NDArray[np.float64], valid: NDArray[np.bool_], size: list[int],
                   extend_edge: bool) -> NDArray[np.float64]:
    """Window median of the block SDs (``extend_edge``: see :func:`local_robust_sd`)."""
    if extend_edge:
        _, idx = ndi.distance_transform_edt(~valid, return_indices=True)
        return np.asarray(ndi.median_filter(blk[tuple(idx)], size=size, mode="nearest"))
    med = nan_median_filter(np.where(valid, blk, np.nan), size)
    empty = ~np.isfinite(med)
    if empty.any():
        _, idx = ndi.distance_transform_edt(empty, return_indices=True)
        med = med[tuple(idx)]
    return np.asarray(med)


def nan_median_filter(x: NDArray[np.floating], size: list[int],
                      max_elements: int = 8_000_000) -> NDArray[np.float64]:
    """Median of the finite values of ``x`` in a ``size`` box (odd sizes, centred)
    around each element; NaN where the box holds none. Outside ``x`` counts as NaN.

    Equal, value for value, to ``ndi.generic_filter(x, np.nanmedian, size=size,
    mode="constant", cval=np.nan)``: each window is sorted (NaN last) and the
    middle one or the mean of the middle two finite values is taken, as
    ``np.median`` does. scipy has no NaN-ignoring median filter, and
    ``generic_filter`` calls Python once per element (80 of the 150 s of CPU of a
    synthetic patient's 15 detections). Works in slabs of at most ``max_elements``
    window values (float64).

    >>> x = np.arange(5.0)[:, None, None] * np.ones((5, 1, 1)); x[2] = np.nan
    >>> nan_median_filter(x, [3, 1, 1])[:, 0, 0].tolist()
    [0.5, 0.5, 2.0, 3.5, 3.5]
    """
    if any(k % 2 == 0 for k in size):
        raise ValueError(f"nan_median_filter needs odd window sizes, got {size}")
    r = [k // 2 for k in size]
    xp = np.pad(np.asarray(x, np.float64), [(h, h) for h in r], constant_values=np.nan)
    win = np.lib.stride_tricks.sliding_window_view(xp, size)  # x.shape + size, a view
    out = np.empty(x.shape, np.float64)
    per_row = int(np.prod(x.shape[1:])) * int(np.prod(size))
    rows = max(1, max_elements // max(1, per_row))
    for s0 in range(0, x.shape[0], rows):
        part = win[s0:s0 + rows]
        w = np.sort(part.reshape(*part.shape[:x.ndim], -1), axis=-1)
        n = np.sum(np.isfinite(w), axis=-1)
        lo = np.take_along_axis(w, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
        hi = np.take_along_axis(w, (n // 2)[..., None], axis=-1)[..., 0]
        with np.errstate(invalid="ignore"):
            out[s0:s0 + rows] = np.where(n > 0, np.where(n % 2 == 1, hi, (lo + hi) / 2.0),
                                         np.nan)
    return out


def _to_voxels(med: NDArray[np.float64], shape: tuple[int, ...], shp: tuple[int, ...]
               ) -> NDArray[np.float32]:
    """Block values interpolated back to the voxel grid of ``shape``."""
    out = ndi.zoom(med, [n / s for n, s in zip(shape, shp, strict=True)], order=1,
                   mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    return np.asarray(out, np.float32)


def review_threshold(n_voxels: int, spacing_mm: tuple[float, ...], smooth_mm: float,
                     alpha: float) -> float:
    """One-sided z threshold with ``alpha`` expected noise clusters per search volume.

    Gaussian random field theory (Worsley 1996): the expected number of clusters
    of a smooth 3D Gaussian field above ``u`` is the Euler characteristic
    density ``R * (4 ln 2)^(3/2) / (2 pi)^2 * (u^2 - 1) * exp(-u^2 / 2)`` with
    ``R = volume / prod(FWHM)`` resels; FWHM per axis is
    ``max(voxel, 2.355 * smooth_mm)`` (the applied smoothing; the images' own
    smoothness only makes this conservative). The result is capped by the
    Bonferroni threshold over voxels, which is exact for rough fields. A fixed
    rule from the noise model, not tuned on any test case.
    """
    from scipy.optimize import brentq
    from scipy.stats import norm

    fwhm = [max(float(s), 2.3548 * smooth_mm) for s in spacing_mm]
    vol = n_voxels * float(np.prod([float(s) for s in spacing_mm]))
    resels = max(1.0, vol / float(np.prod(fwhm)))
    c = resels * (4 * np.log(2)) ** 1.5 / (2 * np.pi) ** 2

    def ec(u: float) -> float:
        return float(c * (u * u - 1) * np.exp(-u * u / 2) - alpha)

    u_rft = float(brentq(ec, 1.5, 12.0)) if ec(1.5) > 0 else 1.5
    u_bonf = float(norm.isf(alpha / max(1, n_voxels)))
    return min(u_rft, u_bonf)


def combine_z(z: NDArray[np.floating], others: list[NDArray[np.floating]],
              defined: list[NDArray[np.bool_]], tissue: NDArray[np.bool_]
              ) -> tuple[NDArray[np.float32], list[float]]:
    """Stouffer combination of co-directional z-maps, allowing for correlation.

    A new lesion raises FLAIR and T2w together, while most scan-rescan
    differences (flow, CSF suppression, misregistration of one series) touch
    one acquisition only, so evidence is pooled voxel-wise:
    ``z_c = sum(z_i) / sqrt(sum_ij rho_ij)`` over the maps defined at the
    voxel (``rho_ii = 1``; ``rho_ij`` = Pearson correlation of the two maps in
    ``tissue`` where neither shows a change, ``|z| < 3``, clipped at 0: shared
    misregistration correlates them).
    Under the null each ``z_i`` is standard normal, so ``z_c`` is too: the same
    review threshold applies (Stouffer 1949; Zaykin 2011, J Evol Biol 24:1836,
    for the correlated form). Where only ``z`` is defined, ``z_c = z``.

    Arrays share one grid (``[i, j, k]``); ``defined[n]`` marks where
    ``others[n]`` is valid (inside its search region and field of view).
    Returns ``(z_c, rho)`` with ``rho[n]`` the correlation of ``others[n]``
    with ``z``.

    >>> import numpy as np
    >>> z = np.array([[[3.0, 0.0]]]); o = np.array([[[3.0, 1.0]]])
    >>> zc, _ = combine_z(z, [o], [np.array([[[True, False]]])], np.zeros_like(z, bool))
    >>> [round(float(v), 3) for v in zc.ravel()]
    [4.243, 0.0]
    """
    zs = [np.asarray(z, np.float32)] + [np.asarray(o, np.float32) for o in others]
    ms = [np.ones(zs[0].shape, bool)] + [np.asarray(m, bool) for m in defined]
    n = len(zs)
    rho = np.eye(n)
    for a in range(n):
        for b in range(a + 1, n):
            # null correlation: voxels without a change in either map (|z| < 3), so that
            # a real lesion seen in both does not inflate it
            sel = tissue & ms[a] & ms[b] & (np.abs(zs[a]) < 3) & (np.abs(zs[b]) < 3)
            if sel.sum() > 100:
                r = float(np.corrcoef(zs[a][sel], zs[b][sel])[0, 1])
                rho[a, b] = rho[b, a] = max(0.0, r) if np.isfinite(r) else 0.0
    num = np.zeros(zs[0].shape, np.float64)
    var = np.zeros(zs[0].shape, np.float64)
    for a in range(n):
        num += np.where(ms[a], zs[a], 0.0)
        for b in range(n):
            var += np.where(ms[a] & ms[b], rho[a, b], 0.0)
    out = (num / np.sqrt(np.maximum(var, 1.0))).astype(np.float32)
    return out, [round(float(rho[0, k]), 4) for k in range(1, n)]
