"""Spinal cord and canal masks and vertebral levels, without trained weights.

Method (intensity/shape-based, initialised from the PAM50 template):

1. The image is reoriented (axis permutation/flip only, no interpolation) so
   that its array axes run L, P, S (SimpleITK "LPS" orientation: array index
   ``[k, j, i]`` = ``[superior, posterior, left]``) and, if needed, resampled
   to an isotropic working grid (1 mm by default).
2. **Canal centreline**: every axial slice is matched (normalised
   cross-correlation) against an axial cross-section of the cord+CSF taken
   from the PAM50 template (the template T2 for T2-weighted images; for
   T1-weighted images a T1-like section built from the PAM50 cord mask and its
   CSF ring: cord bright, CSF dark). The response is smoothed along the
   superior-inferior axis and its per-slice maximum, median-filtered, gives
   the centreline. A single template cross-section is enough because the
   cervical canal looks alike from C2 to T1 at 1 mm.
3. **Cord mask**: in each slice, the connected region around the centreline
   whose intensity lies on the cord side of ``cord + 0.35 * (CSF - cord)``
   (cord intensity at the centreline, CSF = 90th percentile of the bright
   ring in T2 / dark ring in T1). The partial-volume edge would be at 0.5 for
   a thick CSF layer; the thin (1-3 mm) cervical CSF never reaches its
   plateau next to the cord, hence a lower fraction (chosen on the two
   available manually segmented images, see docs/spine.md).
4. **Canal (thecal sac) mask**: cord plus the CSF connected to it (or, with no
   cord, the CSF blob at the centreline), bounded by the midpoint between CSF
   and the surrounding tissue intensity, filled and convex-hulled per slice.
   For lumbar series (``has_cord=False``) the centreline is found with a bright
   (T2) disc-shaped blob filter at the thecal-sac scale instead.

The template-based alternative (warping the PAM50 cord mask) is used for
vertebral levels (:func:`vertebral_levels`), not for the cord outline:
intensity edges give a subject-specific outline, whereas a warped population
mask does not follow the subject's cord shape.

Conventions: inputs and outputs are SimpleITK images, whose geometry is LPS+
world mm. Masks are ``sitkUInt8`` (0/1) on the input grid. Centreline points
are LPS+ world mm. ``contrast="t2"`` means CSF bright (T2w), ``"t1"`` means
CSF dark (T1w).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.spatial import Delaunay

Contrast = Literal["t1", "t2"]

_CORD_FRACTION = 0.35  # see module docstring, step 3
_CSF_PCT = 90.0

#: Default location of the PAM50 small template copied into the repository.
PAM50_DIR = Path(__file__).resolve().parents[2] / "atlases" / "pam50-small" / "template"

#: PAM50 level label values: 1 = C1 ... 7 = C7, 8 = T1 ... 19 = T12, 20 = L1 ...
LEVEL_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 6)},
}


# --------------------------------------------------------------------------- helpers


def _check_image(image: sitk.Image, name: str = "image") -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a scalar 3D image, got {image.GetDimension()}D "
                         f"with {image.GetNumberOfComponentsPerPixel()} components")
    if min(image.GetSize()) < 3:
        raise ValueError(f"{name}: image too small {image.GetSize()}")


def to_work_grid(image: sitk.Image, spacing_mm: float = 1.0,
                 interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Reorient ``image`` to LPS array axes and resample to isotropic ``spacing_mm``.

    Returns a float32 image whose array (``GetArrayFromImage``) is indexed
    ``[k, j, i]`` = ``[S, P, L]`` with ``spacing_mm`` voxels. No resampling is
    done when the reoriented image is already axis-aligned at ``spacing_mm``.
    """
    _check_image(image)
    img = sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS")
    sp = np.asarray(img.GetSpacing())
    aligned = np.allclose(np.asarray(img.GetDirection()), np.eye(3).ravel(), atol=1e-6)
    if aligned and np.allclose(sp, spacing_mm, atol=1e-3):
        return img
    extent = sp * np.asarray(img.GetSize())
    size = [max(1, int(round(e / spacing_mm))) for e in extent]
    # keep the physical centre: origin of a grid of `size` voxels covering the same extent
    centre_idx = (np.asarray(img.GetSize()) - 1) / 2.0
    centre = np.asarray(img.TransformContinuousIndexToPhysicalPoint(centre_idx.tolist()))
    origin = centre - (np.asarray(size) - 1) / 2.0 * spacing_mm
    return sitk.Resample(img, size, sitk.Transform(), interpolator, origin.tolist(),
                         [spacing_mm] * 3, np.eye(3).ravel().tolist(), 0.0, sitk.sitkFloat32)


def mask_to_grid(mask_work: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Bring a 0/1 mask from the working grid onto ``reference``'s grid (uint8 0/1).

    The mask is resampled as a float fraction with linear interpolation and
    thresholded at 0.5 so that it is not blocky when the grids differ.
    """
    soft = sitk.Resample(sitk.Cast(mask_work, sitk.sitkFloat32), reference, sitk.Transform(),
                         sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(soft >= 0.5, sitk.sitkUInt8)


def _array_to_image(arr: NDArray[np.generic], like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.CopyInformation(like)
    return out


def _robust_normalise(a: NDArray[np.float64]) -> NDArray[np.float64]:
    p1, p99 = np.percentile(a, [1.0, 99.0])
    if p99 <= p1:
        raise ValueError("image has no intensity contrast (1st and 99th percentiles equal)")
    return (a - p1) / (p99 - p1)


def _disk_offsets(r: float) -> NDArray[np.float64]:
    n = int(np.ceil(r))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    return np.hypot(yy, xx)


def _ncc_per_slice(a: NDArray[np.float64], tpl: NDArray[np.float64]) -> NDArray[np.float64]:
    """Normalised cross-correlation of every axial slice of ``a`` with 2D ``tpl``.

    Written with scipy filters because no installed library offers a
    per-slice NCC (scikit-image is not a project dependency).
    """
    t = tpl - tpl.mean()
    t = t / np.sqrt((t**2).sum())
    h, w = t.shape
    num = ndi.correlate(a, t[None], mode="nearest")
    mu = ndi.uniform_filter(a, (1, h, w), mode="nearest")
    mu2 = ndi.uniform_filter(a * a, (1, h, w), mode="nearest")
    sd = np.sqrt(np.maximum(mu2 - mu * mu, 1e-12) * h * w)
    return np.asarray(num / sd)


# --------------------------------------------------------------------------- template


@dataclass(frozen=True)
class Pam50:
    """PAM50 small template arrays on its own grid (array axes ``[S, P, L]``, 1x1x2 mm).

    ``t2``: T2w template; ``cord``: cord mask; ``levels``: cord labelled with
    vertebral levels (1 = C1 ... see :data:`LEVEL_NAMES`); ``discs``: point
    labels of the intervertebral discs (value n = disc above level n).
    ``spacing``: (z, y, x) voxel size in mm.
    """

    t2: NDArray[np.float64]
    cord: NDArray[np.bool_]
    levels: NDArray[np.int16]
    discs: NDArray[np.int16]
    spacing: tuple[float, float, float]


@lru_cache(maxsize=4)
def load_pam50(template_dir: Path = PAM50_DIR) -> Pam50:
    """Load the PAM50 small template from ``template_dir`` (reoriented to LPS array axes)."""
    files = {"t2": "PAM50_small_t2.nii.gz", "cord": "PAM50_small_cord.nii.gz",
             "levels": "PAM50_small_levels.nii.gz", "discs": "PAM50_small_label_disc.nii.gz"}
    arrs: dict[str, NDArray[np.float64]] = {}
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)
    for key, name in files.items():
        p = Path(template_dir) / name
        if not p.exists():
            raise FileNotFoundError(f"{p}: PAM50 template file missing")
        img = sitk.DICOMOrient(sitk.ReadImage(str(p), sitk.sitkFloat32), "LPS")
        arrs[key] = sitk.GetArrayFromImage(img).astype(np.float64)
        s = img.GetSpacing()
        spacing = (float(s[2]), float(s[1]), float(s[0]))
    return Pam50(t2=arrs["t2"], cord=arrs["cord"] > 0.5,
                 levels=np.rint(arrs["levels"]).astype(np.int16),
                 discs=np.rint(arrs["discs"]).astype(np.int16), spacing=spacing)


def _template_section(contrast: Contrast, half: int = 11,
                      template_dir: Path = PAM50_DIR) -> NDArray[np.float64]:
    """Axial cord+CSF cross-section (``2*half+1`` mm square, 1 mm pixels) from PAM50 at C4."""
    tpl = load_pam50(template_dir)
    zs = np.nonzero(tpl.levels == 4)[0]
    zt = int(np.median(zs))
    sl = tpl.t2[zt - 2:zt + 3].mean(0)
    cs = tpl.cord[zt - 2:zt + 3].mean(0) > 0.5
    cy, cx = np.rint(np.argwhere(cs).mean(0)).astype(int)
    if contrast == "t2":
        sec = sl
    else:
        # T1-like section: cord bright, CSF ring dark, other tissue in between
        near = ndi.binary_dilation(cs, iterations=6) & ~cs
        csf = near & (sl > 0.5 * (sl[cs].mean() + sl[near].max()))
        sec = np.full(sl.shape, 0.5)
        sec[csf] = 0.1
        sec[cs] = 1.0
        sec = ndi.gaussian_filter(sec, 0.8)
    return np.asarray(sec[cy - half:cy + half + 1, cx - half:cx + half + 1], dtype=np.float64)


# --------------------------------------------------------------------------- centreline


def _centreline_idx(a: NDArray[np.float64], contrast: Contrast, has_cord: bool,
                    template_dir: Path) -> NDArray[np.float64]:
    """Per-slice (y, x) index of the canal centre on the working grid (1 mm)."""
    if has_cord:
        resp = _ncc_per_slice(a, _template_section(contrast, template_dir=template_dir))
    else:
        if contrast != "t2":
            raise ValueError("canal without cord (lumbar) is only supported for T2w (CSF bright)")
        # thecal sac: bright disc r <= 5 mm against a ring 8-12 mm
        d = _disk_offsets(12.0)
        k = np.zeros_like(d)
        inner, outer = d <= 5.0, (d >= 8.0) & (d <= 12.0)
        k[inner] = 1.0 / inner.sum()
        k[outer] = -1.0 / outer.sum()
        resp = ndi.convolve(a, k[None], mode="nearest")
    resp = ndi.gaussian_filter1d(resp, 3.0, axis=0)
    nz = a.shape[0]
    pts = np.array([np.unravel_index(int(np.argmax(resp[z])), resp[z].shape) for z in range(nz)],
                   dtype=np.float64)
    size = min(7, nz if nz % 2 else nz - 1)
    if size >= 3:
        pts = ndi.median_filter(pts, size=(size, 1), mode="nearest")
        pts = ndi.gaussian_filter1d(pts, 1.5, axis=0, mode="nearest")
    return pts


def canal_centreline(image: sitk.Image, contrast: Contrast, *, has_cord: bool = True,
                     spacing_mm: float = 1.0,
                     template_dir: Path = PAM50_DIR) -> NDArray[np.float64]:
    """Centreline of the spinal canal, one point per ``spacing_mm`` along S.

    Returns an ``(n, 3)`` array of LPS+ world mm points ordered inferior to
    superior. ``has_cord=False`` (lumbar thecal sac, T2w only) uses a bright
    blob filter instead of the PAM50 cord cross-section.
    """
    work = to_work_grid(image, spacing_mm)
    a = _robust_normalise(sitk.GetArrayFromImage(work).astype(np.float64))
    yx = _centreline_idx(a, contrast, has_cord, template_dir)
    idx = np.column_stack([yx[:, 1], yx[:, 0], np.arange(len(yx))])  # (i, j, k)
    return np.array([work.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])


# --------------------------------------------------------------------------- masks


def _slice_masks(a: NDArray[np.float64], yx: NDArray[np.float64], contrast: Contrast,
                 has_cord: bool) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Per-slice cord and canal masks on the working grid (arrays ``[S, P, L]``)."""
    nz, ny, nx = a.shape
    sign = 1.0 if contrast == "t2" else -1.0  # sign*a: CSF high
    b = sign * a
    yy, xx = np.mgrid[0:ny, 0:nx]
    cord = np.zeros(a.shape, bool)
    canal = np.zeros(a.shape, bool)
    # slice-wise intensity levels, then smoothed along z for stability
    lev = np.zeros((nz, 3))
    for z in range(nz):
        r = np.hypot(yy - yx[z, 0], xx - yx[z, 1])
        c_in = b[z][r <= 1.5]
        ring = b[z][(r >= (3.0 if has_cord else 0.0)) & (r <= 9.0)]
        far = b[z][(r >= 13.0) & (r <= 18.0)]
        lev[z] = [np.median(c_in) if c_in.size else 0.0,
                  np.percentile(ring, _CSF_PCT) if ring.size else 1.0,
                  np.median(far) if far.size else 0.0]
    lev = ndi.gaussian_filter1d(lev, 2.0, axis=0, mode="nearest")
    for z in range(nz):
        r = np.hypot(yy - yx[z, 0], xx - yx[z, 1])
        cord_lv, csf_lv, far_lv = lev[z]
        seed = (int(round(yx[z, 0])), int(round(yx[z, 1])))
        if has_cord and csf_lv - cord_lv > 0.1 * max(abs(csf_lv), 1e-6):
            th = cord_lv + _CORD_FRACTION * (csf_lv - cord_lv)
            cand = (b[z] < th) & (r <= 8.0)
            lab, _ = ndi.label(cand)
            # the component at (or nearest to) the centre
            if lab[seed] == 0:
                dist = np.where(lab > 0, r, np.inf)
                if not np.isfinite(dist.min()) or dist.min() > 2.5:
                    continue
                iy, ix = np.unravel_index(int(np.argmin(dist)), dist.shape)
                seed = (int(iy), int(ix))
            cord[z] = ndi.binary_fill_holes(lab == lab[seed])
        th_out = 0.5 * (csf_lv + far_lv)
        cand = ((b[z] > th_out) | cord[z]) & (r <= 12.0)
        if contrast == "t1" and cord[z].any():
            # dark CSF merges with dark ligaments and disc edges in T1w: keep the
            # dark ring within 4 mm of the cord (cervical CSF is a few mm thick)
            cand &= ndi.distance_transform_edt(~cord[z]) <= 4.0
        lab, _ = ndi.label(cand | cord[z])
        # the component at the centre, or the nearest one within 3 mm (a nerve
        # root or the cord's own dark centre may sit on the centreline)
        dist = np.where(lab > 0, r, np.inf)
        if np.isfinite(dist.min()) and dist.min() <= 3.0:
            comp = lab == lab[np.unravel_index(int(np.argmin(dist)), dist.shape)]
        else:
            comp = cord[z].copy()
        comp = ndi.binary_opening(comp, iterations=1) | cord[z]
        canal[z] = _convex_hull(comp) | cord[z]
    return cord, canal


def _convex_hull(m: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Filled convex hull of a 2D mask (pixel centres), via scipy's Delaunay."""
    pts = np.argwhere(m)
    if len(pts) < 4:
        return m.copy()
    try:
        tri = Delaunay(pts.astype(np.float64))
    except Exception:  # noqa: BLE001 - collinear points: no hull, keep the mask
        return m.copy()
    lo, hi = pts.min(0), pts.max(0)
    yy, xx = np.mgrid[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1]
    inside = tri.find_simplex(np.column_stack([yy.ravel(), xx.ravel()])) >= 0
    out = m.copy()
    out[yy.ravel()[inside], xx.ravel()[inside]] = True
    return out


def _smooth_mask(m: NDArray[np.bool_], sigma: float = 0.8) -> NDArray[np.bool_]:
    if not m.any():
        return m
    s = ndi.gaussian_filter(m.astype(np.float64), sigma) >= 0.5
    lab, n = ndi.label(s)
    if n > 1:
        sizes = ndi.sum(s, lab, index=np.arange(1, n + 1))
        s = lab == (int(np.argmax(sizes)) + 1)
    return np.asarray(s)


@dataclass(frozen=True)
class SpineMasks:
    """Cord and canal masks (uint8 0/1 on the input grid) and the canal centreline.

    ``centreline``: ``(n, 3)`` LPS+ world mm, inferior to superior, one point
    per working-grid slice. ``cord`` is empty where no cord was found
    (``has_cord=False`` or below the conus).
    """

    cord: sitk.Image
    canal: sitk.Image
    centreline: NDArray[np.float64]


def spine_masks(image: sitk.Image, contrast: Contrast, *, has_cord: bool = True,
                spacing_mm: float = 1.0, template_dir: Path = PAM50_DIR) -> SpineMasks:
    """Cord and canal (thecal-sac: CSF + cord) masks of a spine image of any orientation.

    ``contrast``: ``"t2"`` (CSF bright) or ``"t1"`` (CSF dark). ``has_cord``:
    False for lumbar series below the conus (only the canal is segmented,
    T2w only). Work happens on an isotropic ``spacing_mm`` grid; masks are
    returned on ``image``'s grid. Raises ``ValueError`` for unsupported input.
    """
    if contrast not in ("t1", "t2"):
        raise ValueError(f"contrast must be 't1' or 't2', got {contrast!r}")
    work = to_work_grid(image, spacing_mm)
    a = _robust_normalise(sitk.GetArrayFromImage(work).astype(np.float64))
    yx = _centreline_idx(a, contrast, has_cord, template_dir)
    cord, canal = _slice_masks(a, yx, contrast, has_cord)
    cord = _smooth_mask(cord)
    canal = _smooth_mask(canal | cord)
    idx = np.column_stack([yx[:, 1], yx[:, 0], np.arange(len(yx))])
    cl = np.array([work.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    return SpineMasks(cord=mask_to_grid(_array_to_image(cord.astype(np.uint8), work), image),
                      canal=mask_to_grid(_array_to_image(canal.astype(np.uint8), work), image),
                      centreline=cl)


def cord_mask(image: sitk.Image, contrast: Contrast, **kwargs: object) -> sitk.Image:
    """Spinal cord mask (uint8 0/1, input grid); see :func:`spine_masks`."""
    return spine_masks(image, contrast, **kwargs).cord  # type: ignore[arg-type]


def canal_mask(image: sitk.Image, contrast: Contrast, **kwargs: object) -> sitk.Image:
    """Canal / thecal-sac mask (CSF + cord, uint8 0/1, input grid); see :func:`spine_masks`."""
    return spine_masks(image, contrast, **kwargs).canal  # type: ignore[arg-type]


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of two masks on the same grid (non-zero voxels)."""
    x = sitk.GetArrayFromImage(a) > 0
    y = sitk.GetArrayFromImage(b) > 0
    s = int(x.sum() + y.sum())
    return float(2.0 * np.logical_and(x, y).sum() / s) if s else 1.0


# --------------------------------------------------------------------------- levels


def _straighten(a: NDArray[np.float64], yx: NDArray[np.float64], y_lo: int = -25, y_hi: int = 12,
                x_half: int = 12) -> NDArray[np.float64]:
    """Resample each axial slice on a patch centred on the centreline (1 mm pixels).

    Rows run from ``y_lo`` mm (anterior: vertebral bodies and discs) to
    ``y_hi`` mm (posterior) of the centre, columns ``+-x_half`` mm.
    """
    yy, xx = np.mgrid[y_lo:y_hi + 1, -x_half:x_half + 1].astype(np.float64)
    out = np.empty((a.shape[0],) + yy.shape)
    for z in range(a.shape[0]):
        out[z] = ndi.map_coordinates(a[z], [yy + yx[z, 0], xx + yx[z, 1]], order=1,
                                     mode="nearest")
    return out


def _nmi(x: NDArray[np.int64], y: NDArray[np.int64], bins: int) -> float:
    """Normalised mutual information (H(x)+H(y))/H(x,y) of two binned arrays."""
    h = np.bincount(x * bins + y, minlength=bins * bins).astype(np.float64)
    p = h / h.sum()
    px = p.reshape(bins, bins).sum(1)
    py = p.reshape(bins, bins).sum(0)

    def ent(q: NDArray[np.float64]) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (ent(px) + ent(py)) / ent(p)


@lru_cache(maxsize=2)
def _straight_template(template_dir: Path = PAM50_DIR) -> tuple[NDArray[np.float64],
                                                               NDArray[np.int16]]:
    """Straightened PAM50 T2 resampled to 1 mm along S, and the level of each 1 mm slice."""
    tpl = load_pam50(template_dir)
    z = np.arange(tpl.t2.shape[0])
    has = np.asarray(tpl.cord.any(axis=(1, 2)), dtype=bool)
    cen = np.array([np.argwhere(tpl.cord[k]).mean(0) if has[k] else (np.nan, np.nan) for k in z])
    yx = np.column_stack([np.interp(z, z[has], cen[has, 0]), np.interp(z, z[has], cen[has, 1])])
    st = _straighten(_robust_normalise(tpl.t2), yx)
    fz = tpl.spacing[0]
    st1 = ndi.zoom(st, (fz, 1.0, 1.0), order=1)
    lev_slice = np.array([np.bincount(tpl.levels[k][tpl.levels[k] > 0]).argmax()
                          if (tpl.levels[k] > 0).any() else 0 for k in z], dtype=np.int16)
    lev1 = lev_slice[np.clip(np.rint(np.arange(st1.shape[0]) / fz).astype(int), 0, len(z) - 1)]
    return st1, lev1


@dataclass(frozen=True)
class LevelResult:
    """Vertebral levels found by matching the straightened image to PAM50.

    ``labels``: cord mask labelled with PAM50 level values (1 = C1 ... 8 = T1,
    see :data:`LEVEL_NAMES`), uint8 on the input grid. ``scale`` and
    ``offset_mm``: the mapping template S (mm, 1 mm slices from the template's
    inferior end) = ``offset_mm + scale * image slice`` (working grid, 1 mm).
    ``score``: normalised mutual information of the best match; ``runner_up``:
    best score of a match more than half a level (8 mm) away, a measure of how
    ambiguous the level identity is.
    """

    labels: sitk.Image
    scale: float
    offset_mm: float
    score: float
    runner_up: float


def vertebral_levels(image: sitk.Image, contrast: Contrast, cord: sitk.Image | None = None, *,
                     scales: tuple[float, ...] = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15),
                     spacing_mm: float = 1.0, template_dir: Path = PAM50_DIR) -> LevelResult:
    """Label the cord with vertebral levels, without any input landmarks.

    The image is straightened along its canal centreline (each axial slice
    resampled on a patch centred on the canal, covering the vertebral bodies
    and discs in front) and matched to the equally straightened PAM50 T2 by
    an exhaustive search over a 1D S-I scale and offset (1 mm steps), with
    normalised mutual information (so T1w and T2w images are both handled).
    Levels of the matched template slices are transferred to the cord mask
    (computed with :func:`spine_masks` when ``cord`` is None). Assumes the
    cord runs roughly along S (sagittal or axial spine series); curvature is
    handled by the straightening, tilt of the slices is not.
    """
    if cord is None:
        cord = spine_masks(image, contrast, spacing_mm=spacing_mm, template_dir=template_dir).cord
    work = to_work_grid(image, spacing_mm)
    a = _robust_normalise(sitk.GetArrayFromImage(work).astype(np.float64))
    yx = _centreline_idx(a, contrast, True, template_dir)
    img_st = _straighten(a, yx)
    tpl_st, tpl_lev = _straight_template(template_dir)
    bins = 16

    def binned(v: NDArray[np.float64]) -> NDArray[np.int64]:
        lo, hi = np.percentile(v, [0.5, 99.5])
        return np.clip(((v - lo) / max(hi - lo, 1e-9) * bins).astype(np.int64), 0, bins - 1)

    xb = binned(img_st).ravel()
    tb = binned(tpl_st)
    n = img_st.shape[0]
    # only template slices that carry a cord level are searched
    valid = np.nonzero(tpl_lev > 0)[0]
    lo_t, hi_t = int(valid.min()), int(valid.max())
    results: list[tuple[float, float, float]] = []
    for s in scales:
        idx0 = np.arange(n) * s
        for off in range(lo_t, int(hi_t - idx0[-1]) + 1):
            k = np.clip(np.rint(off + idx0).astype(int), 0, tpl_st.shape[0] - 1)
            results.append((_nmi(xb, tb[k].ravel(), bins), float(s), float(off)))
    if not results:
        raise ValueError("image is longer than the template's labelled cord; cannot match levels")
    res = np.array(results)
    best = res[int(np.argmax(res[:, 0]))]
    score, scale, off_mm = float(best[0]), float(best[1]), float(best[2])
    centre_best = off_mm + scale * (n - 1) / 2.0
    far = np.abs(res[:, 2] + res[:, 1] * (n - 1) / 2.0 - centre_best) > 8.0
    runner = float(res[far, 0].max()) if far.any() else float("nan")
    k = np.clip(np.rint(off_mm + np.arange(n) * scale).astype(int), 0, tpl_st.shape[0] - 1)
    lev_z = tpl_lev[k].astype(np.uint8)
    cord_w = sitk.GetArrayFromImage(
        sitk.Resample(sitk.Cast(cord, sitk.sitkFloat32), work, sitk.Transform(), sitk.sitkLinear,
                      0.0, sitk.sitkFloat32)) >= 0.5
    lab_w = np.where(cord_w, lev_z[:, None, None], 0).astype(np.uint8)
    lab_img = sitk.Resample(_array_to_image(lab_w, work), cord, sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    lab_img = sitk.Mask(lab_img, sitk.Cast(cord > 0, sitk.sitkUInt8))
    return LevelResult(labels=lab_img, scale=scale, offset_mm=off_mm, score=score, runner_up=runner)
