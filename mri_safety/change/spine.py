"""Spine change detection: canal search region, vertebral level, compartment, syrinx.

Used by :func:`mri_safety.change.compare.detect_registered` with
``region="spine"``; the brain path does not touch this module.

1. **Search region** (:func:`spine_regions`): cord and canal (thecal sac =
   cord + CSF) of the BASELINE from :func:`mri_safety.preprocess.spine.spine_masks`
   (intensity/shape based, PAM50-initialised centreline), the canal dilated by
   ``margin_mm`` (2 mm: the dural edge and the partial-volume rim of the
   segmentation), then restricted by the caller to the part covered by both
   visits. Intensity mapping and noise model are fitted in that region (cord +
   CSF + rim: the cord/CSF edge is where misregistration shows), intensities
   are divided by the baseline CORD median, so ``hyper_ratio`` is relative to
   normal cord (:func:`fit_regions`).
2. **Vertebral levels**: :func:`mri_safety.preprocess.spine.vertebral_levels`
   (straightened image matched to PAM50, no input landmarks) on the baseline
   AND, independently, on the follow-up (its labels brought onto the baseline
   grid with the registration). The level of a candidate is the majority level
   of the labelled baseline cord in the axial slab (+-1 mm along the cord
   axis) through its centroid. It is ``"unknown"`` when the baseline match
   failed, when no labelled cord lies in that slab (beyond the ends of the
   segmented cord), when the two matches disagree on the level identity
   (same level on less than half of the cord both label: one level apart
   gives ~0, the same identity ~0.8-1 as boundaries jitter by 2-3 mm), or
   when the follow-up's match gives another level at the candidate (a
   candidate at a level boundary). Why the second visit: level identity rests on a quasi-periodic
   pattern (similar cervical vertebrae) in a short field of view, and the
   best and second-best matches one level apart can differ by less than the
   noise of the measure (measured: NMI margins 0.0003-0.002 on the synthetic
   3 mm sagittal baselines of one subject, one of three a level off; 0.007
   on the real 1 mm t2). Two acquisitions agreeing is the check that an
   answer does not hinge on one noise realisation; a disagreement is
   reported, not resolved by a guess.
3. **Compartment** (:func:`describe`): ``intramedullary`` when at least half
   of the candidate's voxels lie in the baseline cord, else
   ``extramedullary_intradural`` when at least half lie in the canal, else
   ``canal_edge`` (in the rim outside the segmented canal: dura / epidural
   boundary).
4. **Type**: intramedullary changes follow :data:`CORD_FINDINGS` (a T2-bright
   change is ``cord_signal_change``); an intramedullary change is a
   ``syrinx`` when it is fluid-like, tubular along the cord and centred
   (:func:`is_syrinx`, rule and reasoning there). Outside the cord
   :data:`CANAL_FINDINGS`: a change that makes CSF look like tissue
   (``extramedullary_change``: a new mass or clumped roots in the sac) is
   reportable from ``extra_axial_min_volume_mm3`` on (the brain's
   collection-size rule: smaller focal CSF changes are flow voids and nerve
   roots moving between visits); the opposite sign (CSF brighter on T2w) is
   flow / partial volume and not reported.

Conventions: numpy arrays are ``[i, j, k]`` on the BASELINE grid (as
:func:`mri_safety.change.masks.arr` returns them); SimpleITK images carry LPS+
geometry; every world position or direction in the outputs is RAS+ mm (NIfTI
convention, ``affine`` = baseline voxel -> RAS+ mm). Lengths in mm, volumes
in mm3, intensities in units of the baseline cord median.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from mri_safety.change.masks import arr, dilate_mm
from mri_safety.preprocess.spine import LEVEL_NAMES, spine_masks, vertebral_levels
from mri_safety.register.transforms import sitk_affine_ras

#: compare contrast -> spine-mask contrast: "t2" = CSF brighter than cord, "t1" = darker
SPINE_CONTRAST: dict[str, str] = {
    "t2w": "t2", "t2starw": "t2", "swi": "t2", "adc": "t2",
    "t1w": "t1", "t1ce": "t1", "flair": "t1", "dwi": "t1",
}

#: intramedullary (inside the baseline cord) candidate type and whether it is reported,
#: per contrast and sign; reportability as the brain table (FINDINGS in compare.py)
CORD_FINDINGS: dict[str, dict[int, tuple[str, bool]]] = {
    "flair": {1: ("cord_signal_change", True), -1: ("cord_signal_decrease", False)},
    "t2w": {1: ("cord_signal_change", True), -1: ("cord_signal_decrease", False)},
    "t1w": {1: ("cord_t1_signal_increase", True), -1: ("cord_t1_signal_decrease", True)},
    "t1ce": {1: ("new_cord_enhancement", True), -1: ("cord_t1_signal_decrease", False)},
    "dwi": {1: ("new_cord_restricted_diffusion", True), -1: ("cord_dwi_signal_decrease", False)},
    "adc": {1: ("cord_adc_increase", False), -1: ("cord_adc_decrease", True)},
    "swi": {1: ("cord_swi_signal_increase", False), -1: ("new_cord_dark_focus", True)},
    "t2starw": {1: ("cord_t2star_signal_increase", False), -1: ("new_cord_dark_focus", True)},
}
#: outside the cord (thecal sac and canal edge): new tissue in CSF makes it look like
#: cord (darker on T2w, brighter on FLAIR/T1w/DWI where CSF is dark); reported only from
#: ``extra_axial_min_volume_mm3``. The other sign is CSF flow / partial volume.
CANAL_FINDINGS: dict[str, dict[int, tuple[str, bool]]] = {
    "flair": {1: ("extramedullary_change", True), -1: ("canal_signal_decrease", False)},
    "t2w": {1: ("canal_signal_increase", False), -1: ("extramedullary_change", True)},
    "t1w": {1: ("extramedullary_change", True), -1: ("canal_signal_decrease", False)},
    "t1ce": {1: ("new_extramedullary_enhancement", True), -1: ("canal_signal_decrease", False)},
    "dwi": {1: ("extramedullary_change", True), -1: ("canal_signal_decrease", False)},
    "adc": {1: ("canal_signal_increase", False), -1: ("extramedullary_change", True)},
    "swi": {1: ("canal_signal_increase", False), -1: ("new_extramedullary_dark_focus", True)},
    "t2starw": {1: ("canal_signal_increase", False),
                -1: ("new_extramedullary_dark_focus", True)},
}
SYRINX = ("syrinx", True)

#: canal dilation defining the search region (mm)
MARGIN_MM = 2.0
#: a candidate is fluid-like when its follow-up intensity is at least this far from
#: cord towards CSF (0.5: more fluid than tissue in a partial-volume voxel)
SYRINX_FLUID = 0.5
#: ... tubular: length along the cord axis at least this multiple of its width
SYRINX_ELONGATION = 2.0
#: ... centred: centroid within this fraction of the cord's equivalent radius of the
#: cord centre
SYRINX_CENTRED = 0.4
#: smallest covered baseline cord for a spine comparison (mm3; ~1 cm of cervical cord)
MIN_CORD_MM3 = 500.0
#: half-thickness (mm) of the axial slabs used for the local level, the local cord centre
#: and the local cord / CSF intensity levels
_LEVEL_SLAB_MM = 1.0
_CENTRE_SLAB_MM = 2.0
_INTENSITY_SLAB_MM = 10.0
#: baseline and follow-up level matches must give the same level on at least this share
#: of the cord both label (the midpoint between one identity, ~1, and one level apart, ~0)
LEVEL_AGREEMENT = 0.5
#: what is reported when a level or side cannot be determined
UNKNOWN = "unknown"


@dataclass(frozen=True)
class SpineRegions:
    """Baseline spine masks and levels on the baseline grid.

    ``cord``, ``canal``, ``search`` (canal dilated by ``margin_mm``): bool
    ``[i, j, k]``. ``levels``: uint8 ``[i, j, k]``, PAM50 level value of each
    cord voxel (1 = C1 ... 8 = T1, see
    :data:`mri_safety.preprocess.spine.LEVEL_NAMES`), 0 elsewhere; None when
    the level match failed (``info["levels"]["error"]`` says why).
    ``levels_followup``: the same from the follow-up's own level match,
    brought onto the baseline grid (nearest neighbour, registration
    transform) and kept on the baseline cord; None when not computed or
    failed.
    ``centreline_ras``: ``(n, 3)`` canal centreline, RAS+ mm, inferior to
    superior, about 1 mm apart. ``affine``: baseline voxel -> RAS+ mm.
    ``spacing``: voxel size (mm) per array axis. ``info``: method and level
    match figures for ``parameters["spine"]``.
    """

    cord: NDArray[np.bool_]
    canal: NDArray[np.bool_]
    search: NDArray[np.bool_]
    levels: NDArray[np.uint8] | None
    centreline_ras: NDArray[np.float64]
    affine: NDArray[np.float64]
    spacing: tuple[float, float, float]
    margin_mm: float
    info: dict[str, Any] = field(default_factory=dict)
    levels_followup: NDArray[np.uint8] | None = None

    @property
    def method(self) -> str:
        """``mask_method`` of the comparison."""
        return (f"preprocess.spine.spine_masks (canal + {self.margin_mm:g} mm; "
                f"cord for intensity scaling)")


def spine_regions(baseline: sitk.Image, contrast: str, margin_mm: float = MARGIN_MM, *,
                  followup: sitk.Image | None = None, transform: sitk.Transform | None = None
                  ) -> SpineRegions:
    """Cord, canal, search region and vertebral levels of a (bias-corrected) baseline.

    ``baseline``: SimpleITK spine image (any orientation; LPS geometry).
    ``contrast``: compare contrast (``t2w``, ``t1w``, ... see :data:`SPINE_CONTRAST`).
    ``followup`` + ``transform`` (baseline -> follow-up points, LPS mm): the
    follow-up's own level match is computed too (``levels_followup``); a
    follow-up whose levels cannot be matched leaves it None (recorded in
    ``info["levels"]["followup"]``).
    Raises ``ValueError`` when the contrast is unknown, ``margin_mm`` negative,
    or no cord is found (not a spinal cord image, or a lumbar series below the
    conus, which this detection does not handle).
    """
    c = contrast.lower()
    if c not in SPINE_CONTRAST:
        raise ValueError(f"spine detection: unknown contrast {contrast!r}; expected one of "
                         f"{sorted(SPINE_CONTRAST)}")
    if not margin_mm >= 0:
        raise ValueError(f"spine detection: margin_mm must be >= 0, got {margin_mm}")
    sc = SPINE_CONTRAST[c]
    sm = spine_masks(baseline, sc)  # type: ignore[arg-type]
    cord = arr(sm.cord) > 0
    canal = (arr(sm.canal) > 0) | cord
    s0, s1, s2 = (float(s) for s in baseline.GetSpacing())
    sp = (s0, s1, s2)
    vox = s0 * s1 * s2
    if cord.sum() * vox < MIN_CORD_MM3:
        raise ValueError(f"spine detection: baseline cord mask is {cord.sum() * vox:.0f} mm3 "
                         f"(< {MIN_CORD_MM3:g} mm3): no spinal cord found in the baseline")
    info: dict[str, Any] = {"mask_contrast": sc, "margin_mm": margin_mm,
                            "cord_mm3": round(float(cord.sum() * vox), 1),
                            "canal_mm3": round(float(canal.sum() * vox), 1)}
    levels: NDArray[np.uint8] | None
    try:
        lr = vertebral_levels(baseline, sc, sm.cord)  # type: ignore[arg-type]
        levels = np.where(cord, arr(lr.labels), 0).astype(np.uint8)
        info["levels"] = {"method": "preprocess.spine.vertebral_levels (PAM50 match, NMI)",
                          "nmi": round(lr.score, 4), "runner_up_nmi": round(lr.runner_up, 4),
                          "scale": lr.scale, "offset_mm": lr.offset_mm,
                          "found": sorted(LEVEL_NAMES[int(v)] for v in np.unique(levels)
                                          if int(v) in LEVEL_NAMES)}
    except ValueError as e:  # level match impossible: levels reported as "unknown"
        levels = None
        info["levels"] = {"error": str(e)}
    lev_fu: NDArray[np.uint8] | None = None
    if followup is not None and levels is not None:
        if transform is None:
            raise ValueError("spine detection: a follow-up needs its registration transform")
        try:
            fr = vertebral_levels(followup, sc)  # type: ignore[arg-type]
            lab = sitk.Resample(fr.labels, baseline, transform, sitk.sitkNearestNeighbor, 0,
                                sitk.sitkUInt8)
            lev_fu = np.where(cord, arr(lab), 0).astype(np.uint8)
            both = (levels > 0) & (lev_fu > 0)
            info["levels"]["followup"] = {
                "nmi": round(fr.score, 4), "runner_up_nmi": round(fr.runner_up, 4),
                "agreement": round(float((levels[both] == lev_fu[both]).mean()), 3)
                if both.any() else None}
        except ValueError as e:
            info["levels"]["followup"] = {"error": str(e)}
    lps = np.asarray(sm.centreline, np.float64)
    return SpineRegions(cord=cord, canal=canal, search=dilate_mm(canal, margin_mm, sp),
                        levels=levels, centreline_ras=lps * np.array([-1.0, -1.0, 1.0]),
                        affine=sitk_affine_ras(baseline), spacing=sp, margin_mm=margin_mm,
                        info=info, levels_followup=lev_fu)


def fit_regions(regions: SpineRegions, covered: NDArray[np.bool_]
                ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """``(search, fit, norm)`` masks ``[i, j, k]`` restricted to ``covered``.

    ``search``: where candidates are sought (canal + margin); ``fit``: where the
    intensity mapping and the noise model are fitted (the same region: cord,
    CSF and the cord/CSF edges that carry the misregistration noise);
    ``norm``: the baseline cord, whose median is the intensity unit. Raises
    ``ValueError`` when less than :data:`MIN_CORD_MM3` of cord is covered by
    both visits.
    """
    if covered.shape != regions.cord.shape:
        raise ValueError(f"spine detection: coverage mask shape {covered.shape} differs from "
                         f"the baseline grid {regions.cord.shape}")
    vox = float(np.prod(regions.spacing))
    norm = regions.cord & covered
    if norm.sum() * vox < MIN_CORD_MM3:
        raise ValueError(f"spine detection: only {norm.sum() * vox:.0f} mm3 of baseline cord "
                         f"is covered by both visits (< {MIN_CORD_MM3:g} mm3)")
    search = regions.search & covered
    return search, search.copy(), norm


# --------------------------------------------------------------------------- geometry


def _world(regions: SpineRegions, idx: NDArray[np.int64]) -> NDArray[np.float64]:
    """RAS+ mm of voxel indices ``(n, 3)``."""
    a = regions.affine
    return np.asarray(idx, np.float64) @ a[:3, :3].T + a[:3, 3]


def cord_axis(regions: SpineRegions, point_ras: NDArray[np.float64]) -> NDArray[np.float64]:
    """Unit tangent (RAS+, pointing superior) of the canal centreline nearest ``point_ras``.

    Finite difference over +-3 centreline points (~+-3 mm); a straight S axis
    when the centreline has fewer than 2 points.
    """
    cl = regions.centreline_ras
    if len(cl) < 2:
        return np.array([0.0, 0.0, 1.0])
    k = int(np.argmin(np.linalg.norm(cl - point_ras, axis=1)))
    lo, hi = max(0, k - 3), min(len(cl) - 1, k + 3)
    t = cl[hi] - cl[lo]
    n = float(np.linalg.norm(t))
    if n == 0:
        return np.array([0.0, 0.0, 1.0])
    t = t / n
    return t if t[2] >= 0 else -t


def shape_along_cord(regions: SpineRegions, idx: NDArray[np.int64], axis: NDArray[np.float64]
                     ) -> tuple[float, float]:
    """``(length_mm, width_mm)`` of a voxel set along / across the cord ``axis``.

    Second moments of the voxel boxes (centre scatter + each voxel's own
    extent, ``edge^2 / 12`` per voxel axis, so thick slices count with their
    thickness), converted to full lengths of the equivalent solid ellipsoid
    (``2 sqrt(5 var)``). ``width_mm`` is the larger transverse axis.
    """
    w = _world(regions, idx)
    rel = w - w.mean(axis=0)
    a = regions.affine[:3, :3]
    box = (a @ a.T) / 12.0  # covariance of a uniform voxel box, world mm^2
    along = rel @ axis
    var_along = float(along.var() + axis @ box @ axis)
    proj = np.eye(3) - np.outer(axis, axis)
    trans = rel @ proj.T
    cov = trans.T @ trans / max(len(rel), 1) + proj @ box @ proj.T
    var_trans = float(np.linalg.eigvalsh(cov).max())
    return 2.0 * np.sqrt(5.0 * var_along), 2.0 * np.sqrt(5.0 * max(var_trans, 0.0))


def _slab(regions: SpineRegions, mask: NDArray[np.bool_], centre: NDArray[np.float64],
          axis: NDArray[np.float64], half_mm: float) -> NDArray[np.int64]:
    """Voxel indices of ``mask`` within ``half_mm`` of the plane through ``centre``
    normal to ``axis`` (half-width at least half a voxel's extent along ``axis``)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return idx
    a = regions.affine[:3, :3]
    half = max(half_mm, 0.5 * float(np.abs(a.T @ axis).max()))
    d = (_world(regions, idx) - centre) @ axis
    return np.asarray(idx[np.abs(d) <= half])


def _level_in_slab(regions: SpineRegions, levels: NDArray[np.uint8],
                   centre: NDArray[np.float64], axis: NDArray[np.float64]) -> str:
    idx = _slab(regions, levels > 0, centre, axis, _LEVEL_SLAB_MM)
    if len(idx) == 0:
        return UNKNOWN
    best = int(np.bincount(levels[tuple(idx.T)].astype(np.int64)).argmax())
    return LEVEL_NAMES.get(best, UNKNOWN)


def level_at(regions: SpineRegions, centre: NDArray[np.float64], axis: NDArray[np.float64]
             ) -> tuple[str, str | None, bool]:
    """``(level, note, ambiguous)``: vertebral level name (``"C3"``) of the labelled
    baseline cord in the axial slab through ``centre`` (RAS+ mm), or ``"unknown"`` with
    a ``note`` saying why (no level match, no labelled cord there, or, ``ambiguous``,
    the follow-up's own match gives another level there)."""
    if regions.levels is None:
        return UNKNOWN, "no vertebral level match on the baseline", False
    lv = _level_in_slab(regions, regions.levels, centre, axis)
    if lv == UNKNOWN:
        return UNKNOWN, "no labelled cord at this position", False
    if regions.levels_followup is not None:
        agree = regions.info.get("levels", {}).get("followup", {}).get("agreement")
        if agree is None or agree < LEVEL_AGREEMENT:
            return UNKNOWN, (f"ambiguous: the follow-up's level match disagrees with the "
                             f"baseline's (same level on {agree} of the cord; baseline says "
                             f"{lv})"), True
        lf = _level_in_slab(regions, regions.levels_followup, centre, axis)
        if lf not in (UNKNOWN, lv):
            return UNKNOWN, f"ambiguous: baseline match {lv}, follow-up match {lf}", True
    return lv, None, False


def level_span(regions: SpineRegions, idx: NDArray[np.int64], axis: NDArray[np.float64]) -> str:
    """``"C3"`` or ``"C3-C5"``: levels of the labelled baseline cord between the
    candidate's superior and inferior ends (projected on ``axis``); ``"unknown"`` if
    there is none."""
    if regions.levels is None:
        return UNKNOWN
    lab = np.argwhere(regions.levels > 0)
    if len(lab) == 0:
        return UNKNOWN
    s = _world(regions, idx) @ axis
    s_lab = _world(regions, lab) @ axis
    sel = (s_lab >= s.min() - 0.5) & (s_lab <= s.max() + 0.5)
    vals = sorted({int(v) for v in regions.levels[tuple(lab[sel].T)]})
    names = [LEVEL_NAMES[v] for v in vals if v in LEVEL_NAMES]
    if not names:
        return UNKNOWN
    return names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"


# --------------------------------------------------------------------------- type


@dataclass(frozen=True)
class SyrinxEvidence:
    """Measurements behind :func:`is_syrinx`.

    ``fluid``: follow-up intensity of the candidate (90th percentile towards
    CSF) as a fraction of the way from the local cord level (0) to the local
    CSF level (1), NaN when cord and CSF do not differ in this contrast;
    ``csf_sign``: +1 when CSF is brighter than cord here (T2w), -1 when darker;
    ``length_mm`` / ``width_mm``: along / across the cord axis
    (:func:`shape_along_cord`); ``offset_mm``: in-plane distance of the
    centroid from the cord centre; ``cord_radius_mm``: equivalent radius
    ``sqrt(area / pi)`` of the local cord cross-section.
    """

    fluid: float
    csf_sign: int
    length_mm: float
    width_mm: float
    offset_mm: float
    cord_radius_mm: float


def syrinx_evidence(regions: SpineRegions, idx: NDArray[np.int64], base: NDArray[np.floating],
                    fu: NDArray[np.floating]) -> SyrinxEvidence:
    """Fluid-likeness, shape and centring of the candidate with voxel indices ``idx``.

    ``base``, ``fu``: baseline and follow-up on the baseline grid with the
    same smoothing and intensity normalisation (``ZPair.base`` / ``ZPair.fu``),
    so partial volume affects the CSF reference and the candidate alike. The
    local cord level is the baseline median in the cord, the CSF level the
    baseline 90th percentile (towards CSF) in canal-minus-cord, both within
    +-10 mm along the cord axis of the centroid.
    """
    w = _world(regions, idx)
    centre = w.mean(axis=0)
    axis = cord_axis(regions, centre)
    length, width = shape_along_cord(regions, idx, axis)
    cord_sl = _slab(regions, regions.cord, centre, axis, _INTENSITY_SLAB_MM)
    csf_sl = _slab(regions, regions.canal & ~regions.cord, centre, axis, _INTENSITY_SLAB_MM)
    fluid = float("nan")
    toward = 1.0
    if len(cord_sl) and len(csf_sl):
        cord_lv = float(np.median(base[tuple(cord_sl.T)]))
        toward = 1.0 if float(np.median(base[tuple(csf_sl.T)])) >= cord_lv else -1.0
        csf_lv = float(np.percentile(toward * base[tuple(csf_sl.T)], 90.0)) * toward
        q = float(np.percentile(toward * fu[tuple(idx.T)], 90.0)) * toward
        # at least 20 % of the cord level apart, else the contrast cannot tell fluid
        if abs(csf_lv - cord_lv) >= 0.2 * abs(cord_lv):
            fluid = (q - cord_lv) / (csf_lv - cord_lv)
    ring = _slab(regions, regions.cord, centre, axis, _CENTRE_SLAB_MM)
    offset, radius = float("nan"), float("nan")
    if len(ring):
        cw = _world(regions, ring)
        a = regions.affine[:3, :3]
        half = max(_CENTRE_SLAB_MM, 0.5 * float(np.abs(a.T @ axis).max()))
        area = len(ring) * float(abs(np.linalg.det(a))) / (2.0 * half)
        radius = float(np.sqrt(area / np.pi))
        d = centre - cw.mean(axis=0)
        offset = float(np.linalg.norm(d - (d @ axis) * axis))
    return SyrinxEvidence(fluid=fluid, csf_sign=int(toward), length_mm=length, width_mm=width,
                          offset_mm=offset, cord_radius_mm=radius)


def is_syrinx(ev: SyrinxEvidence, sign: int) -> bool:
    """Syrinx rule for an intramedullary change of ``sign`` (all must hold; the
    change must go towards CSF, ``sign == ev.csf_sign``):

    * **fluid-like**: ``ev.fluid >= SYRINX_FLUID`` (0.5). A syrinx is a
      cavity of CSF-like fluid, so in a voxel dominated by it the signal is
      closer to CSF than to cord (T2w bright, T1w dark); demyelination, oedema
      or gliosis raise the T2 signal of tissue but it stays between cord and
      CSF. 0.5 is the partial-volume midpoint ("more fluid than tissue").
      Both levels are taken from the baseline with the same smoothing as the
      follow-up, so blurring lowers the reference and the candidate alike.
    * **tubular along the cord**: ``length >= SYRINX_ELONGATION x width`` (2).
      A syrinx extends along the central canal over one or more segments
      while the cord limits its width (a few mm); a focal lesion or a cyst is
      about as long as wide.
    * **centred**: centroid within ``SYRINX_CENTRED`` (0.4) x the cord's
      equivalent radius of the cord centre. The central canal lies at the
      centre of the cord, whereas inflammatory/demyelinating lesions favour
      the peripheral (dorsal, lateral) white matter; 0.4 r is 1.6-2 mm for a
      cervical cord (r ~ 4-5 mm): the central fifth of the cross-section,
      allowing one to two voxels of uncertainty of the mask centre.

    The thresholds come from this reasoning, not from fitting a case. A
    long, centred, fluid-bright change is typed a syrinx even when it is a
    longitudinally extensive lesion with fluid-like signal; the reviewer sees
    the measurements in ``location``.
    """
    return bool(sign == ev.csf_sign and np.isfinite(ev.fluid) and ev.fluid >= SYRINX_FLUID
                and ev.length_mm >= SYRINX_ELONGATION * ev.width_mm
                and np.isfinite(ev.offset_mm) and np.isfinite(ev.cord_radius_mm)
                and ev.offset_mm <= SYRINX_CENTRED * ev.cord_radius_mm)


@dataclass(frozen=True)
class SpineCandidate:
    """Type, reportability, ``location`` and extra reasons of one spine candidate."""

    type: str
    reportable: bool
    location: dict[str, Any]
    reasons: list[str]


def describe(regions: SpineRegions, voxels: NDArray[np.int64], sign: int, contrast: str,
             base: NDArray[np.floating], fu: NDArray[np.floating], volume_mm3: float,
             min_extramedullary_mm3: float) -> SpineCandidate:
    """Compartment, vertebral level, type and ``location`` of one candidate.

    ``voxels``: flat indices (C order) into the baseline ``[i, j, k]`` grid;
    ``sign``: +1 follow-up brighter, -1 darker; ``base`` / ``fu``: as in
    :func:`syrinx_evidence`. ``location`` keys: ``region`` ("spine"),
    ``vertebral_level`` (``"C4"`` or ``"unknown"``), ``compartment``
    (``intramedullary`` | ``extramedullary_intradural`` | ``canal_edge``),
    ``side`` (``left`` | ``right`` | ``midline``: centroid more than 1 mm from
    the cord centre in RAS x; ``unknown`` without cord in the slab),
    ``vertebral_level_span`` (``"C3-C4"``),
    ``offset_from_cord_centre_mm``, ``length_along_cord_mm``, ``width_mm``,
    ``fluid_likeness`` (the syrinx rule's measurements, :class:`SyrinxEvidence`).
    """
    c = contrast.lower()
    if c not in CORD_FINDINGS:
        raise ValueError(f"spine detection: unknown contrast {contrast!r}")
    if sign not in (1, -1):
        raise ValueError(f"spine detection: sign must be +1 or -1, got {sign}")
    v = np.asarray(voxels, np.int64)
    if v.size == 0:
        raise ValueError("spine detection: empty candidate")
    idx = np.column_stack(np.unravel_index(v, regions.cord.shape))
    in_cord = float(regions.cord.ravel()[v].mean())
    in_canal = float(regions.canal.ravel()[v].mean())
    if in_cord >= 0.5:
        compartment = "intramedullary"
    elif in_canal >= 0.5:
        compartment = "extramedullary_intradural"
    else:
        compartment = "canal_edge"
    ev = syrinx_evidence(regions, idx, base, fu)
    w = _world(regions, idx)
    centre = w.mean(axis=0)
    axis = cord_axis(regions, centre)
    level, level_note, ambiguous = level_at(regions, centre, axis)
    ring = _slab(regions, regions.cord, centre, axis, _CENTRE_SLAB_MM)
    side = UNKNOWN
    if len(ring):
        dx = float(centre[0] - _world(regions, ring)[:, 0].mean())
        side = "right" if dx > 1.0 else ("left" if dx < -1.0 else "midline")
    reasons = [f"{compartment} ({100 * in_cord:.0f}% of voxels in the baseline cord), "
               f"vertebral level {level}" + (f" ({level_note})" if level_note else "")]
    if compartment == "intramedullary":
        ctype, reportable = CORD_FINDINGS[c][sign]
        if is_syrinx(ev, sign):
            ctype, reportable = SYRINX
            reasons.append(f"syrinx: fluid-like ({ev.fluid:.2f} of cord->CSF), length "
                           f"{ev.length_mm:.1f} mm >= {SYRINX_ELONGATION:g} x width "
                           f"{ev.width_mm:.1f} mm, {ev.offset_mm:.1f} mm from the cord centre")
        elif not reportable:
            reasons.append(f"sign not reported as a finding for {c}")
    else:
        ctype, reportable = CANAL_FINDINGS[c][sign]
        if not reportable:
            reasons.append(f"CSF {'brighter' if sign > 0 else 'darker'} outside the cord "
                           "(flow / partial volume): not reported")
        elif volume_mm3 < min_extramedullary_mm3:
            reportable = False
            reasons.append(f"outside the cord and smaller than {min_extramedullary_mm3:g} mm3 "
                           "(flow voids, nerve roots)")
    loc: dict[str, Any] = {
        "region": "spine", "vertebral_level": level, "compartment": compartment, "side": side,
        "vertebral_level_span": UNKNOWN if ambiguous else level_span(regions, idx, axis)}
    # measurements (left out when not measurable, e.g. no cord in the slab)
    for key, val, nd in (("offset_from_cord_centre_mm", ev.offset_mm, 1),
                         ("length_along_cord_mm", ev.length_mm, 1), ("width_mm", ev.width_mm, 1),
                         ("fluid_likeness", ev.fluid, 2)):
        if np.isfinite(val):
            loc[key] = round(float(val), nd)
    return SpineCandidate(type=ctype, reportable=bool(reportable), location=loc, reasons=reasons)
