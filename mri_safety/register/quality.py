"""Registration quality: similarity, edge alignment, coverage overlap and a failure flag.

Images are SimpleITK images (LPS+, world mm); ``transform`` maps fixed points to
moving points. All scores are computed on the fixed grid cropped to the mask,
restricted to voxels that the moving image covers after the transform.

Scores:

* ``ncc``: normalised cross-correlation of intensities inside the mask.
* ``edge``: correlation of gradient magnitudes (Gaussian derivative, sigma
  ``edge_sigma_mm``) inside the mask: sensitive to sub-millimetre shifts of
  tissue boundaries, largely insensitive to smooth intensity differences.
* ``overlap``: fraction of fixed-mask voxels that fall inside the moving
  image's field of view (partial coverage, slabs).
* ``improvement``: local-optimality probe. The edge score is re-evaluated at
  12 small perturbations of the transform (+-``probe_mm`` along each axis and
  +-``probe_deg`` about each axis through the mask centroid); a correct
  registration sits at (or within noise of) a maximum of the edge score, so
  the largest gain over the unperturbed score says how far off it is. This
  makes the flag self-calibrating across contrasts and slice thicknesses,
  where absolute NCC/edge values differ widely between correct pairs (the
  gain is a difference of scores, not an absolute level).

Flag: ``failed`` when ``overlap < overlap_min`` or ``ncc < ncc_min`` (gross
failure); ``suspicious`` when the probe gain exceeds ``gain_max`` or
``edge < edge_min``. Thresholds are in :class:`QualityParams`; calibration on
known misregistrations of real images is in ``docs/registration.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from mri_safety.register.transforms import affine_matrix


@dataclass(frozen=True)
class QualityParams:
    """Thresholds and settings of :func:`assess` (lengths in world mm).

    edge_sigma_mm: Gaussian sigma of the gradient magnitude used by the edge score.
    probe_mm: translation of the optimality probes.
    probe_deg: rotation of the optimality probes (degrees, about the mask centroid).
    gain_max: largest allowed gain of the edge score at a probe
        (``edge_probe - edge``) before flagging ``suspicious``. Calibrated on
        real pairs: correctly registered pairs gave <= 0.007 (thick-slice
        sagittal and FLAIR pairs sit at ~0.005 because MI and edge optima differ
        by ~0.1 mm there); known errors of 1 mm / 1 deg gave >= 0.015.
    edge_min: edge score below which the pair is ``suspicious``.
    ncc_min: NCC below which the pair is ``failed``.
    overlap_min: coverage overlap below which the pair is ``failed``.
    max_voxels: the evaluation grid is coarsened (integer shrink) until the
        cropped mask box holds at most this many voxels (speed).
    """

    edge_sigma_mm: float = 1.0
    probe_mm: float = 0.5
    probe_deg: float = 0.5
    gain_max: float = 0.008
    edge_min: float = 0.3
    ncc_min: float = 0.3
    overlap_min: float = 0.5
    max_voxels: int = 1_000_000


@dataclass
class QualityReport:
    """Scores and flag of one registration (see module docstring)."""

    ncc: float
    edge: float
    overlap: float
    gain: float
    status: str  # "ok", "suspicious" or "failed"
    reasons: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return self.status != "ok"


def perturb(transform: sitk.Transform, centre: tuple[float, float, float] | np.ndarray,
            translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
            rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.AffineTransform:
    """Return ``transform o P`` with ``P`` a small rigid motion of the fixed space.

    ``P`` rotates by ``rotation_deg`` (about x, y, z, LPS) around ``centre`` and
    then translates by ``translation_mm``. Used for the probes and to apply
    known misregistrations for calibration.
    """
    e = sitk.Euler3DTransform()
    e.SetCenter([float(c) for c in centre])
    e.SetRotation(*[float(np.deg2rad(r)) for r in rotation_deg])
    e.SetTranslation([float(t) for t in translation_mm])
    a1, b1 = affine_matrix(e)
    a2, b2 = affine_matrix(transform)
    out = sitk.AffineTransform(3)
    out.SetMatrix([float(v) for v in (a2 @ a1).ravel()])
    out.SetTranslation([float(v) for v in (a2 @ b1 + b2)])
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


class _Evaluator:
    def __init__(self, fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image,
                 p: QualityParams) -> None:
        lab = sitk.LabelShapeStatisticsImageFilter()
        m = sitk.Cast(mask > 0, sitk.sitkUInt8)
        lab.Execute(m)
        if not lab.HasLabel(1):
            raise ValueError("quality: mask is empty")
        self.centre = np.asarray(lab.GetCentroid(1))
        bb = lab.GetBoundingBox(1)
        f = sitk.RegionOfInterest(sitk.Cast(fixed, sitk.sitkFloat32), bb[3:], bb[:3])
        m = sitk.RegionOfInterest(m, bb[3:], bb[:3])
        n = int(np.prod(f.GetSize()))
        k = 1
        while n / k**3 > p.max_voxels:
            k += 1
        if k > 1:
            f = sitk.BinShrink(f, [k] * 3)
            m = sitk.Shrink(m, [k] * 3)
        self.grid = f
        self.mask = sitk.GetArrayFromImage(m) > 0
        self.f = sitk.GetArrayFromImage(f)
        self.fg = sitk.GetArrayFromImage(
            sitk.GradientMagnitudeRecursiveGaussian(f, p.edge_sigma_mm))
        self.moving = sitk.Cast(moving, sitk.sitkFloat32)
        ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(moving)
        self.ones = ones
        self.p = p

    def coverage(self, t: sitk.Transform) -> np.ndarray:
        c = sitk.Resample(self.ones, self.grid, t, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayFromImage(c) > 0

    def scores(self, t: sitk.Transform, sel: np.ndarray) -> tuple[float, float]:
        mv = sitk.Resample(self.moving, self.grid, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        mg = sitk.GetArrayFromImage(
            sitk.GradientMagnitudeRecursiveGaussian(mv, self.p.edge_sigma_mm))
        return (_corr(self.f[sel], sitk.GetArrayFromImage(mv)[sel]),
                _corr(self.fg[sel], mg[sel]))


def assess(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
           mask: sitk.Image, params: QualityParams | None = None,
           probes: bool = True) -> QualityReport:
    """Score how well ``moving`` aligns with ``fixed`` through ``transform`` inside ``mask``.

    ``mask`` is on the fixed grid (e.g. the baseline brain mask). The moving
    image's field of view limits the evaluated region (``overlap``).
    """
    p = params or QualityParams()
    ev = _Evaluator(fixed, moving, mask, p)
    cov = ev.coverage(transform)
    # erode the coverage by the edge kernel so FOV borders do not count as edges
    sel = ev.mask & cov
    overlap = float(sel.sum() / max(1, ev.mask.sum()))
    reasons: list[str] = []
    if sel.sum() < 1000:
        nan = float("nan")
        return QualityReport(ncc=nan, edge=nan, overlap=overlap, gain=nan,
                             status="failed", reasons=[f"overlap {overlap:.2f}: too few voxels"])
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(
        _arr_like(cov.astype(np.uint8), ev.grid),
        [max(1, int(round(3 * p.edge_sigma_mm / s))) for s in ev.grid.GetSpacing()])) > 0
    sel = ev.mask & inner if (ev.mask & inner).sum() >= 1000 else sel
    ncc, edge = ev.scores(transform, sel)
    gain = 0.0
    if probes:
        for axis in range(3):
            for sign in (-1.0, 1.0):
                tr = [0.0, 0.0, 0.0]
                tr[axis] = sign * p.probe_mm
                rot = [0.0, 0.0, 0.0]
                rot[axis] = sign * p.probe_deg
                for pt in (perturb(transform, ev.centre, translation_mm=tuple(tr)),  # type: ignore[arg-type]
                           perturb(transform, ev.centre, rotation_deg=tuple(rot))):  # type: ignore[arg-type]
                    _, e = ev.scores(pt, sel)
                    gain = max(gain, e - edge)
    status = "ok"
    if overlap < p.overlap_min:
        reasons.append(f"overlap {overlap:.2f} < {p.overlap_min}")
    if ncc < p.ncc_min:
        reasons.append(f"ncc {ncc:.3f} < {p.ncc_min}")
    if reasons:
        status = "failed"
    else:
        if gain > p.gain_max:
            reasons.append(f"edge score improves by {gain:.3f} > {p.gain_max} at a "
                           f"{p.probe_mm} mm / {p.probe_deg} deg probe (not at optimum)")
        if edge < p.edge_min:
            reasons.append(f"edge {edge:.3f} < {p.edge_min}")
        if reasons:
            status = "suspicious"
    return QualityReport(ncc=ncc, edge=edge, overlap=overlap, gain=float(gain), status=status,
                         reasons=reasons)


def _arr_like(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(like)
    return out
