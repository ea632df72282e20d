"""Image quality metrics (IQMs) following MRIQC's definitions.

Reference for all: Esteban O. et al., "MRIQC: Advancing the automatic
prediction of image quality in MRI from unseen sites", PLoS ONE 12(9):
e0184661, 2017 (doi:10.1371/journal.pone.0184661), and the MRIQC
documentation, "IQMs for structural images"
(https://mriqc.readthedocs.io/en/latest/iqms/t1w.html, module
``mriqc.qc.anatomical``). Each function below is a small pure function of
summary statistics (or of an intensity array) and names the original paper.

Intensities are in the image's own (arbitrary) units; all metrics are unitless.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

#: sqrt((4 - pi) / 2): std of a Rayleigh (magnitude-of-pure-noise) background
#: divided by the Gaussian noise sigma of the complex channels (MRIQC's
#: ``DIETRICH_FACTOR``, there written 1 / sqrt(2 / (4 - pi))).
DIETRICH_FACTOR = math.sqrt((4.0 - math.pi) / 2.0)


def snr(mu_fg: float, sigma_fg: float, n: int) -> float:
    """Within-tissue signal-to-noise ratio (MRIQC ``snr``; Magnotta & Friedman,
    J Digit Imaging 19(2):140-147, 2006).

    ``SNR = mu_F / (sigma_F * sqrt(n / (n - 1)))`` with ``mu_F``, ``sigma_F``
    the mean and (population) standard deviation of the ``n`` voxels of one
    tissue mask (e.g. white matter). Higher is better.
    """
    if n < 2 or sigma_fg <= 0:
        return math.inf if mu_fg > 0 and n >= 2 else math.nan
    return float(mu_fg / (sigma_fg * math.sqrt(n / (n - 1))))


def snr_dietrich(mu_fg: float, sigma_air: float) -> float:
    """SNR with the noise estimated from the air background (MRIQC
    ``snr_dietrich``; Dietrich et al., J Magn Reson Imaging 26(2):375-385, 2007).

    ``SNR_D = mu_F / (sigma_air / sqrt((4 - pi) / 2))``: in a magnitude image
    the air is Rayleigh distributed and its standard deviation is
    ``sqrt((4 - pi) / 2) ~ 0.655`` times the Gaussian noise sigma. Needs an air
    background (see :func:`mri_safety.qc.assess.air_mask`). Higher is better.
    """
    if sigma_air <= 0:
        return math.nan
    return float(DIETRICH_FACTOR * mu_fg / sigma_air)


def cnr(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float,
        sigma_air: float = 0.0) -> float:
    """Contrast-to-noise ratio (MRIQC ``cnr``; Magnotta & Friedman 2006).

    ``CNR = |mu_GM - mu_WM| / sqrt(sigma_air^2 + sigma_GM^2 + sigma_WM^2)``.
    ``sigma_air`` is the std of the air background; pass 0 when there is no air
    (the value is then the tissue-only CNR and slightly higher). Higher is better.
    """
    den = math.sqrt(sigma_air**2 + sigma_gm**2 + sigma_wm**2)
    return math.nan if den <= 0 else float(abs(mu_gm - mu_wm) / den)


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """Coefficient of joint variation of WM and GM (MRIQC ``cjv``; Ganzetti et
    al., Front Neuroinform 10:10, 2016).

    ``CJV = (sigma_WM + sigma_GM) / |mu_WM - mu_GM|``. Rises with noise, motion
    and intensity non-uniformity. Lower is better.
    """
    d = abs(mu_wm - mu_gm)
    return math.inf if d == 0 else float((sigma_wm + sigma_gm) / d)


def efc(values: NDArray[np.floating]) -> float:
    """Entropy focus criterion (MRIQC ``efc``; Atkinson et al., IEEE Trans Med
    Imaging 16(6):903-910, 1997), normalised as in MRIQC.

    With ``x_j`` the ``N`` non-negative voxel values (whole image, or inside
    a frame mask), ``B_max = sqrt(sum x_j^2)``,
    ``E = -sum (x_j / B_max) ln(x_j / B_max)`` and
    ``E_max = -N (1 / sqrt(N)) ln(1 / sqrt(N))`` (all energy spread evenly):
    ``EFC = E / E_max`` in [0, 1]. Ghosting, blurring and background noise
    spread energy and raise it. Lower is better. See :func:`efc_sums` and
    :func:`efc_from_sums` for the same value from sums taken in pieces.

    >>> round(efc(np.full(1000, 7.0)), 6)  # energy spread evenly
    1.0
    """
    return efc_from_sums(*efc_sums(values))


def efc_sums(values: NDArray[np.floating]) -> tuple[int, float, float, float]:
    """``(N, sum |x|, sum x^2, sum |x| ln |x|)`` of ``values`` (0 ln 0 = 0), float64
    sums; add the tuples of disjoint pieces to get those of their union."""
    x = np.abs(np.asarray(values, dtype=np.float64).ravel())
    log_x = np.log(x, out=np.zeros_like(x), where=x > 0)
    return int(x.size), float(x.sum()), float(np.dot(x, x)), float(np.dot(x, log_x))


def efc_from_sums(n: int, sum_x: float, sum_x2: float, sum_xlnx: float) -> float:
    """:func:`efc` from the sums of :func:`efc_sums`:
    ``E = -(sum x ln x - ln(B_max) sum x) / B_max`` with ``B_max = sqrt(sum x^2)``
    (the definition's ``sum r ln r``, ``r = x / B_max``, expanded), so the image
    need not be held as one float64 copy (a 0.7 mm 3D head: 320 MB each)."""
    b_max = math.sqrt(sum_x2)
    if n < 2 or b_max == 0:
        return math.nan
    e_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    e = (sum_xlnx - math.log(b_max) * sum_x) / b_max
    return float(e / e_max)


def fber(median_energy_fg: float, median_energy_air: float) -> float:
    """Foreground-background energy ratio (MRIQC ``fber``; Shehzad et al.,
    "The Preprocessed Connectomes Project Quality Assessment Protocol",
    INCF Neuroinformatics 2015).

    ``FBER = median(|x_F|^2) / median(|x_air|^2)``. MRIQC returns 0 when the
    air energy is below 1e-3 (zero-filled air); here that is NaN, and callers
    report "not applicable". Needs an air background. Higher is better.
    """
    if median_energy_air < 1e-3:
        return math.nan
    return float(median_energy_fg / median_energy_air)


def gsr(mu_ghost: float, mu_nonghost: float, mu_signal: float) -> float:
    """Ghost-to-signal ratio along the phase-encoding direction (MRIQC ``gsr``
    for EPI; Giannelli et al., J Appl Clin Med Phys 11(4):3237, 2010), used
    here on any magnitude image as the ghosting/motion indicator.

    ``GSR = (mu_G - mu_N) / mu_S`` where the ghost region G is the head mask
    shifted by half the field of view along the phase-encoding axis (outside
    the head), N is the remaining air, S the head. Motion and Nyquist ghosts
    raise it; ~0 for a clean image. Needs an air background. Lower is better.
    """
    return math.nan if mu_signal == 0 else float((mu_ghost - mu_nonghost) / mu_signal)


_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def immerkaer_sigma(image: NDArray[np.floating], mask: NDArray[np.bool_],
                    slice_axis: int) -> float:
    """Noise standard deviation without air (Immerkaer, "Fast noise variance
    estimation", Comput Vis Image Underst 64(2):300-302, 1996); not an MRIQC
    metric, added because MRIQC's noise estimates all need air.

    Each 2D slice (perpendicular to ``slice_axis``) is filtered with the
    difference-of-Laplacians kernel ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]``,
    which cancels smooth (up to locally linear) anatomy and multiplies white
    noise std by 6; here the robust form ``sigma = median(|I * N|) / (0.6745 * 6)``
    over the voxels of ``mask`` (eroded by a 3x3 square in-plane, the kernel
    footprint) is used. Edges and texture inflate it slightly; validated
    against known added noise in tests and docs/qc.md.
    """
    from scipy import ndimage as ndi  # local: keep this module's import light

    img = np.moveaxis(np.asarray(image), slice_axis, 0)  # views: slices are img[k]
    msk = np.moveaxis(np.asarray(mask, dtype=bool), slice_axis, 0)
    res: list[NDArray[np.float64]] = []
    for k in range(img.shape[0]):
        if not msk[k].any():
            continue
        m = ndi.binary_erosion(msk[k], structure=np.ones((3, 3)))
        if m.any():
            sl = np.asarray(img[k], dtype=np.float64)
            res.append(np.abs(ndi.convolve(sl, _IMMERKAER, mode="reflect")[m]))
    if not res:
        return math.nan
    return float(np.median(np.concatenate(res)) / (0.6745 * 6.0))


def snr_local(mu_fg: float, sigma_noise: float) -> float:
    """SNR with the noise from :func:`immerkaer_sigma`: ``mu_F / sigma``
    (the SNR definition of Magnotta & Friedman 2006 with a model-based noise
    estimate instead of the tissue spread). Works without air. Higher is better.
    """
    return math.nan if not sigma_noise > 0 else float(mu_fg / sigma_noise)


def fov_coverage(baseline_mask: NDArray[np.bool_], followup_fov: NDArray[np.bool_]) -> float:
    """Fraction of the baseline head/brain mask inside the follow-up's field of
    view, both on the baseline voxel grid (after registration).

    ``coverage = |M_baseline AND FOV_followup| / |M_baseline|`` in [0, 1]; 1 =
    the same anatomy is covered. (Not an MRIQC metric: MRIQC has no baseline.)
    Higher is better.
    """
    m = np.asarray(baseline_mask, dtype=bool)
    f = np.asarray(followup_fov, dtype=bool)
    if m.shape != f.shape:
        raise ValueError(f"mask shapes differ: {m.shape} vs {f.shape}")
    total = int(m.sum())
    return math.nan if total == 0 else float(np.count_nonzero(m & f) / total)


def fov_mask(reference_shape: tuple[int, ...], reference_affine: NDArray[np.floating],
             moving_shape: tuple[int, ...], moving_affine: NDArray[np.floating],
             reference_to_moving_world: NDArray[np.floating] | None = None) -> NDArray[np.bool_]:
    """Boolean mask on the reference voxel grid of the voxels whose centres fall
    inside the moving image's field of view.

    Affines map voxel -> world RAS+ mm. ``reference_to_moving_world`` (4x4)
    maps a reference world point to the corresponding moving world point
    (identity when ``None``, i.e. the grids are already aligned in world space).
    """
    ref_aff = np.asarray(reference_affine, dtype=float)
    mov_aff = np.asarray(moving_affine, dtype=float)
    t = np.eye(4) if reference_to_moving_world is None else np.asarray(reference_to_moving_world)
    m = np.linalg.inv(mov_aff) @ t @ ref_aff
    shape3 = tuple(int(s) for s in reference_shape[:3])
    out = np.zeros(shape3, dtype=bool)
    ii, jj = np.meshgrid(np.arange(shape3[0]), np.arange(shape3[1]), indexing="ij")
    lim = np.asarray(moving_shape[:3], dtype=float) - 0.5
    for k in range(shape3[2]):  # slice by slice: bounded memory on large grids
        pts = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k), np.ones(ii.size)])
        v = (m @ pts)[:3]
        inside = np.all((v >= -0.5) & (v <= lim[:, None]), axis=0)
        out[:, :, k] = inside.reshape(shape3[:2])
    return out
