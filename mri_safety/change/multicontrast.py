"""Multi-contrast candidate types: restricted diffusion and new enhancement.

Two findings of a cell-therapy safety review need more than one image of a
visit:

* **New restricted diffusion** (acute ischaemia, e.g. emboli at the 24 h visit
  after intravenous cells) is bright on the high-b DWI **and** dark on the
  ADC map. A DWI increase with a normal or high ADC is *T2 shine-through*
  (the b1000 image keeps the T2 weighting of the b0: an old lesion, oedema,
  gliosis), not restricted diffusion. :func:`adc_verdict` judges the ADC of a
  DWI-increase candidate; :func:`restricted_diffusion` types and flags the
  candidates of a DWI comparison with it.
* **New enhancement** (blood-brain-barrier breakdown: inflammation, a new
  mass, an enhancing lesion) is a post-contrast signal rise over the
  pre-contrast image *of the same visit*. :func:`enhancement_map` builds that
  within-visit map (post minus intensity-matched pre after rigid alignment,
  noise-normalised like the change z-maps); :func:`new_enhancement` makes
  ``new_enhancement`` candidates where the follow-up enhances and the baseline
  did not.

:func:`apply_within_visit` is the hook :func:`mri_safety.change.compare.detect_registered`
calls for ``dwi`` and ``t1ce`` comparisons of the brain; without partner images
it keeps the single-contrast result and says so in the candidates' ``reasons``.

Conventions: SimpleITK images keep their own grids and LPS geometry (world
mm); numpy arrays are ``[i, j, k]`` on the BASELINE grid of the comparison
(the main image of the baseline visit) unless a function says otherwise;
reported positions are world RAS+ mm (:mod:`mri_safety.change.candidates`).
ADC values are used only as ratios to the normal-tissue median of the same
map, so their unit (1e-3 or 1e-6 mm2/s, vendor scaling) does not matter.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from mri_safety.change.candidates import Component, extract, label_map
from mri_safety.change.masks import arr, dilate_mm, erode_mm, img_like
from mri_safety.change.midline import centroid_midline
from mri_safety.change.region import AtlasMap
from mri_safety.change.resolution import match_profiles
from mri_safety.change.zmap import (
    gradient_magnitude,
    local_robust_sd,
    noise_model,
    remove_low_frequency,
)
from mri_safety.distance import distance_to_mm
from mri_safety.register.transforms import sitk_affine_ras

if TYPE_CHECKING:
    from mri_safety.change.compare import ChangeResult, RegisteredPair, ZPair
    from mri_safety.change.params import DetectParams

log = logging.getLogger(__name__)

#: contrasts of the main comparison that use within-visit partner images
WITHIN_VISIT_CONTRASTS = ("dwi", "t1ce")


@dataclass(frozen=True)
class MultiContrastParams:
    """Rules of this module (ratios are unit-free; z in units of the noise SD).

    adc_low_ratio: follow-up ADC in the candidate core at or below this multiple
        of the follow-up's normal-tissue median ADC is *low* (acute infarct
        0.4-0.6e-3 mm2/s against about 0.7-0.9e-3 in normal white/grey matter,
        i.e. 0.45-0.85 of tissue; 0.8 sits above the infarct range and below
        the scan-rescan spread of normal tissue, about +-10 %).
    adc_drop_ratio: the follow-up ADC relative to the baseline ADC at the same
        place (each divided by its own tissue median) at or below this is
        *decreased* (ischaemia lowers ADC by 30-50 %).
    adc_normal_ratio: an ADC at or above this multiple of tissue is never
        restricted diffusion, whatever its change (T2 shine-through: DWI high
        from a long T2, ADC normal or high).
    adc_core_fraction: the candidate core is its voxels with z at least this
        fraction of the candidate's peak z: the peak of the DWI change, where
        the lesion fills most of the voxel. A small infarct on a 4-5 mm DWI grid
        is partial-volumed in every voxel and its rim dilutes the ADC drop
        toward normal (an 8 mm synthetic infarct of ADC 0.44 x tissue measured
        0.81 x baseline over the half-maximum core, 0.68 at its peak), so the
        verdict is read where the DWI is brightest, as a reader does.
    adc_min_coverage: share of core voxels the ADC map must cover (finite,
        positive) for a verdict.
    enh_present_z: enhancement z from which enhancement counts as present
        (absent below it).
    enh_margin_voxels: baseline enhancement is spread by this many voxels
        (maximum filter) before it masks follow-up enhancement: residual
        misregistration of vessels and plexus enhancing at both visits.
    enh_fallback_z: without a baseline pre-contrast image, new enhancement must
        also be a rise of the post-contrast signal over the baseline
        post-contrast image (post-post z at least this).
    """

    adc_low_ratio: float = 0.8
    adc_drop_ratio: float = 0.8
    adc_normal_ratio: float = 1.0
    adc_core_fraction: float = 0.8
    adc_min_coverage: float = 0.5
    enh_present_z: float = 2.0
    enh_margin_voxels: int = 1
    enh_fallback_z: float = 2.0


@dataclass
class WithinVisit:
    """Partner images of the two visits of a comparison (SimpleITK, each on its
    own grid, world LPS mm), any of them ``None`` when the visit lacks it.

    For a ``dwi`` comparison: the ADC maps of the baseline and follow-up visits
    (derived from the same acquisition as the DWI of that visit: they share its
    world frame; their grids may differ). For a ``t1ce`` comparison: the
    pre-contrast T1w of each visit. ``notes``: problems met while gathering
    them (file names), copied into the output.
    """

    adc_baseline: sitk.Image | None = None
    adc_followup: sitk.Image | None = None
    pre_baseline: sitk.Image | None = None
    pre_followup: sitk.Image | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------
# restricted diffusion


@dataclass(frozen=True)
class AdcVerdict:
    """ADC of one DWI-increase candidate.

    ``restricted``: True (restricted diffusion), False (ADC at or above normal
    tissue: T2 shine-through), or None: neither confirmed nor excluded (the ADC
    does not cover the candidate, or lies between the restricted range and
    normal tissue). ``rel_tissue``: follow-up core ADC / follow-up tissue median.
    ``rel_baseline``: that ratio divided by the same ratio at baseline (None
    without a baseline ADC). ``coverage``: share of core voxels with ADC.
    """

    restricted: bool | None
    rel_tissue: float | None
    rel_baseline: float | None
    coverage: float
    reason: str


def adc_verdict(fu_core: NDArray[np.floating], base_core: NDArray[np.floating] | None,
                fu_tissue_median: float, base_tissue_median: float | None,
                params: MultiContrastParams | None = None) -> AdcVerdict:
    """Is a DWI increase restricted diffusion? (pure; values of the candidate core).

    ``fu_core`` / ``base_core``: ADC of the follow-up / baseline at the core
    voxels of the candidate (same voxels, same order; NaN or <= 0 where the map
    does not cover). Rule (:class:`MultiContrastParams`)::

        restricted = rel_tissue < adc_normal_ratio
                     and (rel_tissue <= adc_low_ratio or rel_baseline <= adc_drop_ratio)
        not restricted (T2 shine-through) = rel_tissue >= adc_normal_ratio
        otherwise: neither (None)

    with ``rel_tissue = median(fu_core) / fu_tissue_median`` ("low relative to
    normal tissue") and ``rel_baseline = rel_tissue / (median(base_core) /
    base_tissue_median)`` ("decreased vs baseline", both visits in units of
    their own tissue so scanner scaling cancels).

    The middle band is what a small infarct on a coarse DWI grid reads (its
    voxels hold normal tissue too: an 8 mm infarct of ADC 0.38 x tissue read
    0.85-0.90 x tissue on the 4 mm grid of a synthetic study), and also what
    DWI noise reads (noise that raises b1000 lowers the ADC computed from it:
    0.82-0.92). It does not tell the two apart, so it excludes neither: the
    candidate stays a DWI increase for review instead of being dismissed.
    """
    p = params or MultiContrastParams()
    fu = np.asarray(fu_core, np.float64)
    ok = np.isfinite(fu) & (fu > 0)
    cov = float(ok.mean()) if fu.size else 0.0
    if cov < p.adc_min_coverage or not fu_tissue_median > 0:
        return AdcVerdict(None, None, None, cov,
                          f"ADC covers {100 * cov:.0f}% of the candidate core: not judged")
    rel_t = float(np.median(fu[ok]) / fu_tissue_median)
    rel_b: float | None = None
    if base_core is not None and base_tissue_median is not None and base_tissue_median > 0:
        b = np.asarray(base_core, np.float64)
        okb = ok & np.isfinite(b) & (b > 0)
        if okb.mean() >= p.adc_min_coverage:
            rel_b = rel_t / float(np.median(b[okb]) / base_tissue_median)
    low = rel_t <= p.adc_low_ratio
    dropped = rel_b is not None and rel_b <= p.adc_drop_ratio
    base_txt = "no baseline ADC" if rel_b is None else f"{rel_b:.2f} x baseline"
    restricted: bool | None
    if rel_t >= p.adc_normal_ratio:
        restricted = False
        why = (f"ADC not low: {rel_t:.2f} x normal tissue, {base_txt}: DWI increase "
               "without restricted diffusion (T2 shine-through)")
    elif low or dropped:
        restricted = True
        why = (f"restricted diffusion: ADC {rel_t:.2f} x normal tissue, {base_txt} (rule: <= "
               f"{p.adc_low_ratio:g} x tissue or <= {p.adc_drop_ratio:g} x baseline)")
    else:
        restricted = None
        why = (f"ADC {rel_t:.2f} x normal tissue, {base_txt}: below normal tissue but above "
               f"the restricted range (<= {p.adc_low_ratio:g} x tissue or <= "
               f"{p.adc_drop_ratio:g} x baseline); partial volume of a small lesion on this "
               "grid reads so: restriction neither confirmed nor excluded")
    return AdcVerdict(restricted, rel_t, rel_b, cov, why)


def adc_on_grid(adc: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None
                ) -> NDArray[np.float32]:
    """ADC map resampled (linear) on ``grid``: float32 ``[i, j, k]``, NaN where the
    map does not reach or is not positive (masked background).

    ``transform`` maps ``grid`` points to ``adc`` points (LPS mm); None = the
    identity (an ADC of the grid's own visit: same world frame, any voxel grid).
    """
    a = sitk.Cast(adc, sitk.sitkFloat32)
    valid = sitk.Cast(a > 0, sitk.sitkFloat32)
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    v = arr(sitk.Resample(a, grid, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    w = arr(sitk.Resample(valid, grid, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    # a voxel interpolated from masked (0) neighbours is not an ADC value
    return np.where(w > 0.999, v, np.nan).astype(np.float32)


def restricted_diffusion(candidates: list[dict[str, Any]], components: list[Component],
                         z: NDArray[np.floating], adc_fu: NDArray[np.floating] | None,
                         adc_base: NDArray[np.floating] | None, tissue: NDArray[np.bool_],
                         params: MultiContrastParams | None = None
                         ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Type and flag the DWI-increase candidates of a DWI comparison by their ADC.

    ``candidates`` / ``components``: aligned outputs of the DWI comparison
    (:class:`~mri_safety.change.compare.ChangeResult`); ``z``: its z-map;
    ``adc_fu`` / ``adc_base``: ADC of the follow-up / baseline visit on the
    baseline grid (:func:`adc_on_grid`; None when the visit has none);
    ``tissue``: normal-tissue mask (CSF excluded) on that grid. Returns new
    candidate dicts (same order) and a record for ``parameters``.

    A ``new_restricted_diffusion`` candidate stays typed and flaggable when
    :func:`adc_verdict` says restricted (``adc`` joins its ``contrasts``); when
    the ADC is at or above normal tissue it becomes ``t2_shine_through`` and is
    not flagged; when the verdict is neither, or without ADC, it is kept as a
    DWI increase with the reason.
    """
    p = params or MultiContrastParams()
    zf = np.asarray(z, np.float32).ravel()
    fu_med = base_med = None
    if adc_fu is not None:
        v = adc_fu[tissue]
        v = v[np.isfinite(v) & (v > 0)]
        fu_med = float(np.median(v)) if v.size >= 100 else None
    if adc_base is not None:
        v = adc_base[tissue]
        v = v[np.isfinite(v) & (v > 0)]
        base_med = float(np.median(v)) if v.size >= 100 else None
    fu_flat = None if adc_fu is None else np.asarray(adc_fu, np.float32).ravel()
    base_flat = None if adc_base is None else np.asarray(adc_base, np.float32).ravel()
    out = []
    for cand, comp in zip(candidates, components, strict=True):
        c = {**cand, "reasons": list(cand["reasons"]), "contrasts": list(cand["contrasts"])}
        out.append(c)
        if c["type"] != "new_restricted_diffusion":
            continue
        if fu_flat is None or fu_med is None:
            c["reasons"].append("ADC not available at this visit: restricted diffusion not "
                                "confirmed (DWI increase alone)")
            continue
        vz = zf[comp.voxels] * comp.sign
        core = comp.voxels[vz >= p.adc_core_fraction * float(vz.max())]
        ver = adc_verdict(fu_flat[core], None if base_flat is None else base_flat[core],
                          fu_med, base_med, p)
        c["adc"] = {"ratio_to_tissue": _r(ver.rel_tissue), "ratio_to_baseline":
                    _r(ver.rel_baseline), "coverage": round(ver.coverage, 3)}
        c["reasons"].append(ver.reason)
        if ver.restricted is None:
            c["reasons"].append("restricted diffusion not confirmed (DWI increase alone)")
        elif ver.restricted:
            c["contrasts"].append("adc")
        else:
            c["type"] = "t2_shine_through"
            c["flagged"] = False
    info = {"adc_followup": adc_fu is not None, "adc_baseline": adc_base is not None,
            "adc_tissue_median_followup": _r(fu_med, 6),
            "adc_tissue_median_baseline": _r(base_med, 6)}
    return out, info


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


# --------------------------------------------------------------------------
# enhancement


@dataclass
class EnhancementMap:
    """Within-visit enhancement on the post-contrast image's grid.

    ``z``: float32 ``[i, j, k]`` (post minus matched pre, in units of the
    modelled noise SD; 0 outside ``search`` and where the pre image does not
    cover). ``info``: registration and noise-model record (no run times).
    """

    z: NDArray[np.float32]
    info: dict[str, Any]


def enhancement_map(post: sitk.Image, post_n4: sitk.Image, pre: sitk.Image,
                    brain: NDArray[np.bool_], search: NDArray[np.bool_], smooth_mm: float,
                    threads: int = 1, seed: int = 20261125) -> EnhancementMap:
    """Enhancement z-map of one visit on the grid of its post-contrast image.

    ``post`` (raw) and ``post_n4`` (its N4-corrected version, same grid);
    ``pre``: pre-contrast T1w of the same visit (any grid); ``brain`` /
    ``search``: brain and search masks ``[i, j, k]`` on the post grid.

    1. rigid registration pre -> post (same settings as detection, mask = brain + 5 mm);
    2. slice-profile matching (:func:`mri_safety.change.resolution.match_profiles`),
       pre resampled on the post grid and divided by the post's N4 bias field
       (same coil and session: one field for both);
    3. both smoothed with ``smooth_mm``; the pre image scaled by one gain, tissue
       median to tissue median (same sequence within a visit; gadolinium raises
       normal tissue only a few per cent), both divided by the post tissue median;
    4. ``d = post - pre``, low-frequency offset removed, noise model
       ``s0^2 + (delta |grad|)^2`` and local robust SD as for the change z-maps
       (:mod:`mri_safety.change.zmap`); ``z = d / sd``.

    Raises ``ValueError`` when the images hardly overlap.
    """
    from mri_safety.change.compare import DETECT_RIGID
    from mri_safety.register.rigid import RigidParams, register

    sp = tuple(float(s) for s in post.GetSpacing())
    post_n4 = sitk.Cast(post_n4, sitk.sitkFloat32)
    pre = sitk.Cast(pre, sitk.sitkFloat32)
    reg = register(post_n4, pre, fixed_mask=img_like(dilate_mm(brain, 5.0, sp).astype(np.uint8),
                                                     post_n4),
                   params=RigidParams(threads=threads, seed=seed, **DETECT_RIGID))
    tx = reg.transform
    post_deg, pre_deg, res_info = match_profiles(post_n4, pre, tx)
    raw = arr(sitk.Cast(post, sitk.sitkFloat32))
    n4 = arr(post_n4)
    bias = np.where(n4 > 0, raw / np.maximum(n4, 1e-12), 1.0)
    q = arr(sitk.Resample(pre_deg, post_n4, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)) / bias
    cover = arr(sitk.Resample(sitk.Cast(pre * 0 + 1, sitk.sitkFloat32), post_n4, tx,
                              sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    covered = erode_mm(cover > 0.999, 3.0, sp)
    b = arr(post_deg)
    if smooth_mm > 0:
        sig = [smooth_mm / s for s in sp]
        b = ndi.gaussian_filter(b, sig, mode="nearest")
        q = ndi.gaussian_filter(q, sig, mode="nearest")
    inner = erode_mm(brain, 2.0, sp) & covered
    if inner.sum() < 1000:
        raise ValueError("pre- and post-contrast images overlap in fewer than 1000 brain voxels")
    med0 = float(np.median(b[inner]))
    tissue = inner & (b > 0.5 * med0)
    # one gain, tissue median to tissue median: pre and post of one visit are the same
    # sequence, so their contrast is the same apart from the agent; a fitted line
    # (slope + offset) would follow differences of noise and smoothness instead
    # (interpolated pre: slope 1.1-1.2 on a phantom of identical contrast)
    gain = float(np.median(b[tissue]) / max(float(np.median(q[tissue])), 1e-12))
    scale = float(np.median(b[tissue]))
    bn = (b / scale).astype(np.float32)
    qn = (gain * q / scale).astype(np.float32)
    d = remove_low_frequency(bn - qn, tissue, 25.0, sp)
    g = np.maximum(gradient_magnitude(bn, sp), gradient_magnitude(qn, sp))
    model = noise_model(d, g, tissue)
    region = search & covered
    sd = np.maximum(model.sd(g), local_robust_sd(d, region, 20.0, sp, extend_edge=True))
    z = np.where(region, d / sd, 0.0).astype(np.float32)
    info = {"registration_pre_to_post": {"metric": round(reg.metric, 5), "init": reg.init},
            "pre_gain": round(gain, 5), "noise": {"s0": round(model.s0, 5),
                                                           "delta_mm": round(model.delta_mm, 4)},
            "resolution_mm": res_info.get("effective_resolution_mm")}
    return EnhancementMap(z=z, info=info)


def new_enhancement_components(e_fu: NDArray[np.floating], e_base: NDArray[np.floating] | None,
                               postpost_z: NDArray[np.floating], search: NDArray[np.bool_],
                               affine: NDArray[np.floating], z_low: float, z_seed: float,
                               min_volume_mm3: float, params: MultiContrastParams | None = None
                               ) -> list[Component]:
    """Components of enhancement present at follow-up and absent at baseline.

    All arrays ``[i, j, k]`` on the baseline grid (``affine``: voxel -> RAS+ mm).
    ``e_fu`` / ``e_base``: enhancement z of the follow-up (brought onto the
    baseline grid) and of the baseline (None: the baseline has no pre-contrast
    image). Hysteresis ``z_low`` / ``z_seed`` on ``e_fu`` inside ``search`` where
    the baseline did not enhance: ``e_base`` below ``enh_present_z`` within
    ``enh_margin_voxels``; without ``e_base``, where the post-contrast signal rose
    over the baseline post-contrast image (``postpost_z >= enh_fallback_z``).
    """
    p = params or MultiContrastParams()
    allowed = np.asarray(search, bool).copy()
    if e_base is not None:
        size = 2 * p.enh_margin_voxels + 1
        spread = ndi.maximum_filter(np.asarray(e_base, np.float32), size=size, mode="nearest")
        allowed &= spread < p.enh_present_z
    else:
        allowed &= np.asarray(postpost_z) >= p.enh_fallback_z
    return extract(np.asarray(e_fu, np.float32), affine, z_low, z_seed, min_volume_mm3,
                   allowed_pos=allowed, signs=(1,))


def _mask_on(mask: NDArray[np.bool_], src: sitk.Image, dst: sitk.Image,
             transform: sitk.Transform) -> NDArray[np.bool_]:
    """``mask`` on ``src``'s grid -> ``dst``'s grid; ``transform`` maps dst points to
    src points (nearest neighbour)."""
    m = img_like(np.asarray(mask, np.uint8), src)
    return arr(sitk.Resample(m, dst, transform, sitk.sitkNearestNeighbor, 0)) > 0


def new_enhancement(res: ChangeResult, rp: RegisteredPair, zp: ZPair, p: DetectParams,
                    within: WithinVisit, params: MultiContrastParams | None = None
                    ) -> ChangeResult:
    """Replace the post-vs-post increase typing of a ``t1ce`` comparison by
    within-visit enhancement (module docstring).

    Needs ``within.pre_followup``. Enhancement maps: follow-up (on its post
    grid, then onto the baseline grid through the comparison's rigid
    transform) and baseline (when ``within.pre_baseline``). Candidates of
    :func:`new_enhancement_components` become ``new_enhancement`` (score
    ``logistic(1.5 (peak z - z_review))`` with the comparison's ``z_review``;
    mostly extra-axial ones only from ``extra_axial_min_volume_mm3``). A
    post-vs-post increase overlapping one is merged into it (its peak z goes to
    the reasons); one that does not becomes ``post_contrast_signal_increase``,
    not flagged (T1 shortening without enhancement, judged by the T1w
    comparison, or enhancement already present at baseline).
    Decreases are kept. Adds ``maps`` ``enhancement_followup`` /
    ``enhancement_baseline`` (z on the baseline grid).
    """
    from mri_safety.change.compare import REVIEW_SCORE, _location

    mp = params or MultiContrastParams()
    assert within.pre_followup is not None
    base = rp.baseline
    aff = sitk_affine_ras(base)
    sp = tuple(float(s) for s in base.GetSpacing())
    threads, seed = p.registration_threads, p.seed
    inv = rp.transform.GetInverse()
    brain_f = _mask_on(rp.brain, base, rp.followup, inv)
    search_f = _mask_on(zp.brain, base, rp.followup, inv)
    ef = enhancement_map(rp.followup, rp.followup_n4, within.pre_followup, brain_f, search_f,
                         p.smooth_mm, threads, seed)
    e_fu = arr(sitk.Resample(img_like(ef.z, rp.followup), base, rp.transform, sitk.sitkLinear,
                             0.0, sitk.sitkFloat32))
    e_base = None
    info: dict[str, Any] = {"enhancement_followup": ef.info, "parameters": asdict(mp)}
    if within.pre_baseline is not None:
        eb = enhancement_map(rp.baseline, rp.baseline_n4, within.pre_baseline, rp.brain,
                             zp.brain, p.smooth_mm, threads, seed)
        e_base = eb.z
        info["enhancement_baseline"] = eb.info
        info["baseline_reference"] = "baseline enhancement map (within-visit post - pre)"
    else:
        info["baseline_reference"] = ("baseline post-contrast (no baseline pre-contrast): "
                                      f"post-vs-post z >= {mp.enh_fallback_z:g}")
    z_review = float(res.parameters["z_review"])
    min_vol = float(res.parameters["min_volume_used_mm3"])
    comps = new_enhancement_components(e_fu, e_base, res.z, zp.brain, aff, p.z_low, p.z_seed,
                                       min_vol, mp)
    depth = distance_to_mm(~zp.parenchyma, sp)  # mm into the parenchyma, 0 outside
    midline = res.midline if res.midline is not None else centroid_midline(zp.brain, base)
    region = res.parameters.get("region", "brain")
    atlas = AtlasMap.of(rp.subject_to_mni, aff) if region == "brain" else None
    reg_fail = res.registration.get("status") == "fail"
    cands: list[dict[str, Any]] = []
    out_comps: list[Component] = []
    merged: dict[int, list[str]] = {}
    for cand, comp in zip(res.candidates, res.components, strict=True):
        c = {**cand, "reasons": list(cand["reasons"])}
        hit = [n for n, e in enumerate(comps)
               if comp.sign > 0 and bool(np.isin(comp.voxels, e.voxels).any())]
        if hit:  # the same place as a new-enhancement candidate: merged into it
            merged.setdefault(hit[0], []).append(
                f"post-contrast signal also rose vs baseline post-contrast (peak z "
                f"{abs(cand['peak_z']):.1f})")
            continue
        if comp.sign > 0 and cand["type"] == "new_enhancement":
            ez = float(np.mean(e_fu.ravel()[comp.voxels]))
            c["type"] = "post_contrast_signal_increase"
            c["flagged"] = False
            c["reasons"].append(
                f"no new enhancement in the within-visit subtraction (mean enhancement z "
                f"{ez:.1f} at follow-up): T1 shortening without enhancement (see the T1w "
                "comparison) or enhancement already present at baseline")
        cands.append(c)
        out_comps.append(comp)
    for n, comp in enumerate(comps):
        loc = _location(comp, zp.parenchyma, depth, midline, region, atlas)
        inside = np.asarray(zp.parenchyma.ravel()[comp.voxels], bool)
        reportable = True
        reasons = [f"enhancement z {comp.peak_z:.1f} at follow-up (within-visit post - pre) vs "
                   f"review threshold {z_review:.2f}"]
        if e_base is not None:
            reasons.append(f"no enhancement here at baseline (baseline enhancement z < "
                           f"{mp.enh_present_z:g} within {mp.enh_margin_voxels} voxel)")
        else:
            reasons.append("baseline has no pre-contrast T1w: post-contrast signal rose vs "
                           "baseline post-contrast here")
        if float(inside.mean()) < 0.5:
            loc["tissue"] = "extra_axial"
            if comp.volume_mm3 < p.extra_axial_min_volume_mm3:
                reportable = False
                reasons.append(f"extra-axial and smaller than {p.extra_axial_min_volume_mm3:g}"
                               " mm3")
        reasons += merged.get(n, [])
        if reg_fail:
            reasons.append("registration failed: candidates not reliable")
        score = float(1.0 / (1.0 + np.exp(-1.5 * (comp.peak_z - z_review))))
        cands.append({
            "type": "new_enhancement",
            "flagged": bool(reportable and score >= REVIEW_SCORE and not reg_fail),
            "score": round(score, 4), "evidence_z": round(comp.peak_z, 3),
            "volume_mm3": round(comp.volume_mm3, 2),
            "centroid_ras_mm": [round(v, 2) for v in comp.centroid_ras_mm],
            "centroid_baseline_voxel": [round(v, 2) for v in comp.centroid_voxel],
            "peak_z": round(comp.peak_z, 3), "mean_z": round(comp.mean_z, 3), "sign": 1,
            "location": loc, "contrasts": ["t1ce", "t1w"], "reasons": reasons,
            "method": "within-visit enhancement (post - pre)"})
        out_comps.append(comp)
    order = sorted(range(len(cands)), key=lambda i: (-cands[i]["score"], -cands[i]["evidence_z"],
                                                      cands[i]["centroid_baseline_voxel"]))
    cands = [{"id": n, **{k: v for k, v in cands[i].items() if k != "id"}}
             for n, i in enumerate(order, start=1)]
    out_comps = [out_comps[i] for i in order]
    info["n_new_enhancement"] = len(comps)
    maps = {"enhancement_followup": e_fu}
    if e_base is not None:
        maps["enhancement_baseline"] = e_base
    return replace(res, candidates=cands, components=out_comps,
                   labels=label_map(out_comps, res.z.shape),
                   parameters={**res.parameters, "within_visit": info},
                   maps={**res.maps, **maps})


# --------------------------------------------------------------------------
# the hook


def apply_within_visit(res: ChangeResult, rp: RegisteredPair, zp: ZPair, contrast: str,
                       p: DetectParams, within: WithinVisit | None,
                       params: MultiContrastParams | None = None) -> ChangeResult:
    """Within-visit typing of a comparison's candidates (see module docstring).

    ``dwi``: :func:`restricted_diffusion` with the visits' ADC maps brought onto
    the baseline grid (follow-up ADC through the comparison's rigid transform,
    baseline ADC by world position). ``t1ce``: :func:`new_enhancement` when the
    follow-up has a pre-contrast T1w. Other contrasts, or the spine, are
    returned unchanged. A failure of the within-visit step never loses the
    comparison: the single-contrast result is returned with the error in its
    ``reasons`` and ``parameters["within_visit"]``.
    """
    c = contrast.lower()
    if c not in WITHIN_VISIT_CONTRASTS or res.parameters.get("region", "brain") != "brain":
        return res
    w = within or WithinVisit()
    notes = list(w.notes)
    try:
        if c == "dwi":
            adc_fu = (None if w.adc_followup is None
                      else adc_on_grid(w.adc_followup, rp.baseline, rp.transform))
            adc_b = None if w.adc_baseline is None else adc_on_grid(w.adc_baseline, rp.baseline)
            cands, info = restricted_diffusion(res.candidates, res.components, res.z, adc_fu,
                                               adc_b, zp.tissue, params)
            info["parameters"] = asdict(params or MultiContrastParams())
            info["notes"] = notes
            return replace(res, candidates=cands,
                           parameters={**res.parameters, "within_visit": info})
        if w.pre_followup is None:
            why = "no pre-contrast T1w at this visit: enhancement judged from post-contrast " \
                  "vs baseline post-contrast only"
            cands = [{**x, "reasons": [*x["reasons"], why]} if x["type"] == "new_enhancement"
                     else x for x in res.candidates]
            return replace(res, candidates=cands, parameters={
                **res.parameters, "within_visit": {"pre_followup": False, "notes": notes}})
        out = new_enhancement(res, rp, zp, p, w, params)
        out.parameters["within_visit"]["notes"] = notes
        return out
    except (ValueError, RuntimeError) as e:
        log.warning("within-visit %s step failed: %s", c, e)
        msg = f"within-visit step failed ({e}): single-contrast result"
        cands = [{**x, "reasons": [*x["reasons"], msg]} for x in res.candidates]
        return replace(res, candidates=cands, parameters={
            **res.parameters, "within_visit": {"error": str(e), "notes": notes}})


def within_visit_from_extra(contrast: str, extra: list[tuple[sitk.Image, sitk.Image, str]]
                            ) -> tuple[list[tuple[sitk.Image, sitk.Image, str]],
                                       WithinVisit | None]:
    """Split ``mri-safety compare``'s extra pairs: for ``--contrast dwi`` an
    ``adc`` pair, for ``t1ce`` a ``t1w`` pair (the pre-contrast images) are
    the within-visit partners (baseline, follow-up); the rest stay extra
    contrasts."""
    c = contrast.lower()
    role = {"dwi": "adc", "t1ce": "t1w"}.get(c)
    rest, within = [], None
    for b, f, name in extra:
        if role is not None and within is None and name.lower() == role:
            within = (WithinVisit(adc_baseline=b, adc_followup=f) if c == "dwi"
                      else WithinVisit(pre_baseline=b, pre_followup=f))
            continue
        rest.append((b, f, name))
    return rest, within
