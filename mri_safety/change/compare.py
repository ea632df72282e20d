"""Compare a follow-up with its baseline: z-map, ranked candidate new abnormalities.

Pipeline of :func:`detect_pair` (SimpleITK images, LPS geometry; arrays
``[i, j, k]`` in the BASELINE voxel space; world positions reported in RAS+ mm):

1. brain mask of the baseline (:mod:`mri_safety.change.masks`), N4 bias
   correction of both visits (:func:`mri_safety.preprocess.bias.n4_correct`);
2. rigid registration of the follow-up to the baseline
   (:func:`mri_safety.register.rigid.register`; rigid on purpose: a deformable
   warp would register new lesions away);
3. slice-profile matching (:mod:`mri_safety.change.resolution`): the sharper
   acquisition is degraded to the coarser profile; the effective resolution is
   recorded (reduced sensitivity for lesions smaller than it);
4. follow-up resampled on the baseline grid, both smoothed at the lesion scale,
   intensity-normalised (line through brain-tissue quantile pairs, refitted
   without voxels of large change: :func:`~mri_safety.change.zmap.match_intensity`;
   then divided by the baseline tissue median);
5. difference, low-frequency offset removal, noise model
   ``var = s0^2 + (delta * |grad|)^2`` (:mod:`mri_safety.change.zmap`), z-map;
6. hysteresis + 26-connected components + minimum volume (mm3 and resolution
   elements) on both signs; FLAIR/T2 increases must also be lesion-like
   (follow-up above ``hyper_ratio`` x the local normal tissue, at most x the
   tissue median: :func:`~mri_safety.change.zmap.lesion_level`); for T1w/SWI/... the
   baseline must be normal tissue (not a small bright vessel or fat; on
   near-isotropic T1w only structures brighter than white matter count as such,
   :func:`_baseline_bright`); T1w increases must be T1-bright
   (:mod:`~mri_safety.change.t1bright`) and T1w decreases darker than every
   baseline voxel around them (:mod:`~mri_safety.change.t1dark`);
   candidates mostly outside the parenchyma count from a collection-size volume;
   a T2w/PD comparison pooled with FLAIR also searches the fluid map where
   tissue turned to fluid (a new cyst, which cancels in the pooled map:
   :mod:`~mri_safety.change.fluid`);
7. evidence = |peak z| (+ bonus per agreeing extra contrast, - penalties for an
   adjacent opposite-sign candidate and for baseline-edge-dominated noise); score =
   logistic(evidence - z_review) in [0, 1]; ``flagged`` when score >= 0.5 and
   the sign is a reportable finding for the contrast (FLAIR/T2w/PD decreases
   only as a new hypointense focus in the brain: :func:`new_dark_focus`).
   ``z_review`` is a Bonferroni threshold over resolution elements at
   ``review_fwe_alpha``;
8. T1w/FLAIR/T2w brain candidates mostly on tissue that became ventricular CSF
   (contiguous with the baseline ventricles, not contradicted by an extra
   contrast that changed the other way) get ``ventricle_margin``
   (:mod:`mri_safety.change.volume_finding`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage as ndi

from mri_safety.change.candidates import Component, extract, label_map
from mri_safety.change.family import agreement_sign
from mri_safety.change.fluid import (
    FLUID_BRIGHT,
    baseline_fluid_spaces,
    fluid_at_both_visits,
    fluid_z,
    new_fluid,
    widened_space,
)
from mri_safety.change.masks import MaskSet, arr, brain_mask, dilate_mm, erode_mm, img_like
from mri_safety.change.midline import Midline, centroid_midline, find_midline
from mri_safety.change.multicontrast import WithinVisit, apply_within_visit, within_visit_from_extra
from mri_safety.change.params import DetectParams, load_params
from mri_safety.change.region import AtlasMap
from mri_safety.change.resolution import match_profiles
from mri_safety.change.spine import (
    SPINE_CONTRAST,
    SpineRegions,
    describe,
    fit_regions,
    spine_regions,
)
from mri_safety.change.t1bright import vessel_like, white_matter_level
from mri_safety.change.t1dark import below_envelope
from mri_safety.change.volume_finding import (
    CSF_GAIN_SIGN,
    MARGIN_FRACTION,
    csf_contradicted,
    largest_piece,
    margin_fraction,
    new_ventricular_csf,
)
from mri_safety.change.zmap import (
    combine_z,
    gradient_magnitude,
    lesion_level,
    level_from_local,
    local_tissue,
    match_intensity,
    noise_model,
    remove_low_frequency,
    review_threshold,
    signed_local_robust_sd,
)
from mri_safety.distance import distance_to_mm
from mri_safety.morphometry.volumes import ventricle_mask
from mri_safety.preprocess.bias import n4_correct
from mri_safety.preprocess.grid import to_analysis_grid
from mri_safety.preprocess.spine import spine_masks
from mri_safety.register.rigid import RigidParams, register
from mri_safety.register.spine import register_spine
from mri_safety.register.transforms import sitk_affine_ras
from mri_safety.threads import itk_threads

log = logging.getLogger(__name__)

#: candidate type and whether it is reported (flaggable) per contrast and sign
FINDINGS: dict[str, dict[int, tuple[str, bool]]] = {
    "flair": {1: ("new_t2_hyperintensity", True), -1: ("t2_signal_decrease", False)},
    "t2w": {1: ("new_t2_hyperintensity", True), -1: ("t2_signal_decrease", False)},
    # proton density: MS/ischaemic lesions are PD-bright like on T2w
    "pd": {1: ("new_t2_hyperintensity", True), -1: ("t2_signal_decrease", False)},
    "t1w": {1: ("t1_signal_increase", True), -1: ("t1_signal_decrease", True)},
    "t1ce": {1: ("new_enhancement", True), -1: ("t1_signal_decrease", False)},
    "dwi": {1: ("new_restricted_diffusion", True), -1: ("dwi_signal_decrease", False)},
    "adc": {1: ("adc_increase", False), -1: ("adc_decrease", True)},
    "swi": {1: ("swi_signal_increase", False), -1: ("new_dark_focus", True)},
    "t2starw": {1: ("t2star_signal_increase", False), -1: ("new_dark_focus", True)},
}
LESION_LIKE = {"flair", "t2w", "pd", "dwi"}
#: contrasts whose finding is a new DARK focus (haemorrhage, microbleeds): a decrease counts
#: only where the follow-up is hypointense, at most 1 / hyper_ratio x the tissue median (the
#: mirror of the lesion-like rule). The small-bright-structure test of T1w (vessels with
#: inflow or enhancement) is not used on them: grey matter is brighter than white matter
#: there, so with cortical and deep grey texture it marked most of the brain (80 % of the
#: tissue of a synthetic 1 x 1 x 3 mm T2*w), including where microbleeds occur.
DARK_FOCUS = {"t2starw", "swi"}
#: T2-family contrasts whose decreases are reported where they make a new hypointense focus:
#: parenchyma that was not darker than the tissue around it at baseline and is darker than
#: it by the lesion-like margin at follow-up (``1 / hyper_ratio`` x the local normal
#: tissue), not on tissue that became ventricular CSF. Acute and subacute blood
#: (deoxyhaemoglobin, intracellular methaemoglobin) and calcification are dark on T2w and
#: FLAIR, and so is new fluid on FLAIR: without a T2*w series at a visit, a new 10 mm
#: haemorrhage showed only as an unreported FLAIR decrease (synthetic demo trial, 24 h).
#: Other decreases of these contrasts (a lesion fading, a slice-profile shift) stay
#: ``t2_signal_decrease``, not reported.
T2_DARK_FOCUS = {"flair", "t2w", "pd"}
#: extra contrasts pooled voxel-wise with the main z-map (same sign for a new lesion)
POOLED: dict[str, tuple[str, ...]] = {"flair": ("t2w",), "t2w": ("flair",)}
#: main contrasts whose candidates must also show on a T2-family extra, when the visit has
#: one: new tissue visible on T1w without contrast agent (lesion, mass, collection, blood)
#: also changes T2-weighted signal (T2 weighting is the more sensitive to pathology), in
#: either direction; a T1w change with FLAIR/T2w/PD silent there is partial volume,
#: inflow or noise. Post-contrast T1w is not listed: enhancement can be new alone.
NEEDS_T2_CHANGE: dict[str, tuple[str, ...]] = {"t1w": ("flair", "t2w", "pd")}
REVIEW_SCORE = 0.5
#: RigidParams overrides of the detection registration (see register_pair).
DETECT_RIGID: dict[str, Any] = {"gradient_filter": "all", "upsample_mm": None}


@dataclass
class ZPair:
    """Intermediate results of one contrast pair on the baseline grid."""

    z: NDArray[np.float32]
    base: NDArray[np.float32]          # normalised baseline (tissue median = 1)
    fu: NDArray[np.float32]            # normalised follow-up in baseline space
    fu_native: NDArray[np.float32]     # ... at its own resolution (not smoothed, not degraded)
    brain: NDArray[np.bool_]           # search region (intracranial, covered by both)
    parenchyma: NDArray[np.bool_]      # brain mask (parenchyma + ventricles), covered
    tissue: NDArray[np.bool_]
    baseline_bright: NDArray[np.bool_]  # vessel/fat-bright at baseline (+2 mm)
    #: ... of those, the ones brighter than white matter (T1w, :func:`_baseline_bright`)
    baseline_bright_t1: NDArray[np.bool_]
    followup_bright: NDArray[np.bool_]  # small bright structures of the follow-up (+2 mm)
    edge_frac: NDArray[np.float32]     # share of the modelled variance due to edges
    followup_in_baseline: sitk.Image   # raw follow-up resampled (linear) on the baseline grid
    transform: sitk.Transform          # baseline -> follow-up points (LPS mm)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChangeResult:
    """Outcome of :func:`detect_pair`: candidates + maps on the baseline grid."""

    candidates: list[dict[str, Any]]
    labels: NDArray[np.int32]
    z: NDArray[np.float32]
    followup_in_baseline: sitk.Image
    baseline: sitk.Image
    registration: dict[str, Any]
    parameters: dict[str, Any]
    components: list[Component] = field(default_factory=list)
    #: further float32 maps on the baseline grid, written as ``<name>.nii.gz``
    maps: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    #: mid-sagittal plane of the baseline that ``location.side`` refers to
    #: (``parameters["midline"]`` is its rounded record)
    midline: Midline | None = None
    #: baseline -> follow-up points (LPS mm) of the registration
    transform: sitk.Transform | None = None


def _ncc(a: NDArray[np.floating], b: NDArray[np.floating], m: NDArray[np.bool_]) -> float:
    x = np.asarray(a, np.float64)[m]
    y = np.asarray(b, np.float64)[m]
    x = x - x.mean()
    y = y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


#: DetectParams fields that :func:`register_pair` uses (the rest only shape detection)
REGISTER_PARAMS = ("registration_threads", "seed")


@dataclass
class RegisteredPair:
    """Output of :func:`register_pair`: both visits bias-corrected, the baseline's
    masks and the rigid transform; everything :func:`detect_registered` needs
    that does not depend on the detection parameters.

    Images are SimpleITK (LPS geometry, world mm), float32 on their own grids
    (``*_n4`` share the grid of their raw image); masks are numpy ``[i, j, k]``
    on the BASELINE grid. ``transform`` maps baseline points to follow-up
    points (LPS mm), so ``Resample(followup, baseline, transform)`` puts the
    follow-up on the baseline grid.
    """

    baseline: sitk.Image           # raw baseline, float32
    followup: sitk.Image           # raw follow-up, float32
    baseline_n4: sitk.Image
    followup_n4: sitk.Image
    brain: NDArray[np.bool_]       # brain mask (parenchyma + ventricles) of the baseline
    icv: NDArray[np.bool_]         # intracranial mask of the baseline
    mask_method: str
    transform: sitk.Transform
    registration: dict[str, Any]   # method, metric, init, seconds
    # baseline world RAS mm -> MNI152 RAS mm (the baseline's template fit), None without one
    subject_to_mni: NDArray[np.float64] | None = None

    def followup_in_baseline(self) -> sitk.Image:
        """Raw follow-up resampled (linear, float32) on the baseline grid."""
        return sitk.Resample(self.followup, self.baseline, self.transform, sitk.sitkLinear,
                             0.0, sitk.sitkFloat32)


def register_pair(baseline: sitk.Image, followup: sitk.Image, *, threads: int, seed: int,
                  brain: NDArray[np.bool_] | None = None,
                  baseline_n4: sitk.Image | None = None,
                  followup_n4: sitk.Image | None = None,
                  masks: MaskSet | None = None,
                  region: str = "brain", contrast: str | None = None,
                  ) -> RegisteredPair:
    """Step 1-2 of the module docstring: N4 of both visits, baseline masks (or the
    given ``brain`` mask, ``[i, j, k]`` on the baseline grid), rigid registration
    of the follow-up to the baseline with ``threads`` ITK threads and ``seed``.

    ``region="spine"`` (``contrast``: the compare contrast, which picks the T1 or
    T2 cord template): the follow-up is registered with the canal-focused rigid +
    coarse B-spline of :func:`mri_safety.register.spine.register_spine` instead
    (:data:`SPINE_MESH_MM` control points; docs/detection.md, Spine), so a
    different neck bend is followed and the cord's own signal is compared; no
    brain mask is fitted (``brain`` and ``masks`` are not used; the pair's
    ``brain`` and ``icv`` are the baseline canal).

    ``baseline_n4`` / ``followup_n4`` (``n4_correct(image)[0]``) and
    ``masks`` (``brain_mask(baseline_n4)``: brain, intracranial, method, MNI map) may be
    given when already computed (the pipeline caches them per series, since a
    visit is the baseline or follow-up of several comparisons); the result is
    the same as computing them here."""
    base = sitk.Cast(baseline, sitk.sitkFloat32)
    fu = sitk.Cast(followup, sitk.sitkFloat32)
    sp = tuple(float(s) for s in base.GetSpacing())
    if region not in ("brain", "spine"):
        raise ValueError(f"unknown region {region!r}; expected 'brain' or 'spine'")
    base_n4 = n4_correct(base)[0] if baseline_n4 is None else baseline_n4
    fu_n4 = n4_correct(fu)[0] if followup_n4 is None else followup_n4
    if region == "spine":  # no brain mask: the canal is the region (brain / masks unused)
        return _register_spine_pair(base, fu, base_n4, fu_n4, contrast)
    mask_method = "given"
    to_mni = None
    if masks is None and brain is None:
        masks = brain_mask(base_n4)
    if masks is not None:
        brain, icv, mask_method, to_mni = masks
    else:
        assert brain is not None
        icv = dilate_mm(brain, 3.0, sp)
    if brain.sum() < 1000:
        raise ValueError("baseline brain mask has fewer than 1000 voxels")
    reg_mask = img_like(dilate_mm(brain, 5.0, sp).astype(np.uint8), base)
    # ITK's gradient filter at every level and no B-spline upsampling of thick
    # axes: on the real no-change patient-positions pairs (4.8 mm sagittal) this
    # flagged 8 candidates over 6 pairs, against 14 with the registration
    # defaults (finest-level central differences, upsampling), which are tuned
    # for the TRE of synthetic 2D stacks (docs/registration.md).
    reg = register(base_n4, fu_n4, fixed_mask=reg_mask,
                   params=RigidParams(threads=threads, seed=seed, **DETECT_RIGID))
    return RegisteredPair(
        baseline=base, followup=fu, baseline_n4=base_n4, followup_n4=fu_n4,
        brain=brain, icv=icv, mask_method=mask_method, transform=reg.transform,
        subject_to_mni=to_mni,
        registration={"method": f"rigid ({reg.backend}, Mattes MI)",
                      "metric": round(reg.metric, 5), "init": reg.init,
                      "seconds": round(reg.seconds, 2)})


#: B-spline control-point spacing (mm) of the spine registration: coarse enough
#: not to register a focal cord lesion away (a 20 mm mesh cannot follow a 5 mm
#: focus), fine enough for the cervical curvature of a different neck bend
SPINE_MESH_MM = 20.0

#: ITK threads of the spine registration, fixed (as the brain registration's
#: ``metric_threads``): its metric sums per-thread partial results, so with the
#: caller's thread count the z-map differed (up to 6e-6) between ``mri-safety
#: compare --threads 2`` and the pipeline's one thread per task; on a cervical
#: crop one thread costs 5-15 % more time (4.5-4.8 s against 4.8-5.5 s)
SPINE_THREADS = 1


def _register_spine_pair(base: sitk.Image, fu: sitk.Image, base_n4: sitk.Image,
                         fu_n4: sitk.Image, contrast: str | None) -> RegisteredPair:
    """Spine branch of :func:`register_pair`: canal of the baseline
    (:func:`mri_safety.preprocess.spine.spine_masks`), then
    :func:`mri_safety.register.spine.register_spine` (deterministic: every
    metric-mask voxel is sampled, :data:`SPINE_THREADS`). Why not the brain's
    rigid step: a neck bent 20-24 deg differently left the registered cord
    0.64-0.76 NCC-similar and a cord lesion of 83 mm3 was missed; with this
    registration 0.97, found (docs/detection.md). The pair's ``brain`` and
    ``icv`` are that canal (detection takes its regions from
    :func:`mri_safety.change.spine.spine_regions`); no brain mask is fitted to
    a spine image."""
    if contrast is None or contrast.lower() not in SPINE_CONTRAST:
        raise ValueError(f"spine registration: contrast must be one of "
                         f"{sorted(SPINE_CONTRAST)}, got {contrast!r}")
    t0 = time.perf_counter()
    canal = spine_masks(base_n4, SPINE_CONTRAST[contrast.lower()]).canal  # type: ignore[arg-type]
    sr = register_spine(base_n4, fu_n4, canal, mesh_mm=SPINE_MESH_MM, threads=SPINE_THREADS)
    canal_a = arr(canal) > 0
    return RegisteredPair(
        baseline=base, followup=fu, baseline_n4=base_n4, followup_n4=fu_n4,
        brain=canal_a, icv=canal_a.copy(), mask_method="spine canal (preprocess.spine)",
        transform=sr.transform,
        registration={"method": f"rigid + B-spline {SPINE_MESH_MM:g} mm (canal-focused, "
                                "SimpleITK, Mattes MI)",
                      "metric": round(sr.metric, 5), "init": "identity about the canal centroid",
                      "seconds": round(time.perf_counter() - t0, 2)})


def _profile_matched(base_n4: sitk.Image, fu_n4: sitk.Image, base: sitk.Image,
                     tx: sitk.Transform) -> tuple[NDArray[np.float32], NDArray[np.float32],
                                                  dict[str, Any]]:
    """Both bias-corrected visits at the coarser slice profile
    (:func:`~mri_safety.change.resolution.match_profiles`), the follow-up
    resampled onto the baseline grid: numpy ``[i, j, k]`` and the resolution info."""
    b_deg, f_deg, res_info = match_profiles(base_n4, fu_n4, tx)
    f_res = sitk.Resample(f_deg, base, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return arr(b_deg), arr(f_res), res_info


def covered_region(fu: sitk.Image, base: sitk.Image, tx: sitk.Transform) -> NDArray[np.bool_]:
    """Baseline voxels ``(i, j, k)`` inside the follow-up's field of view and the
    baseline's own (minus its outer voxel: 2D slab edges), eroded by 5 mm
    (interpolation and slab-edge fall-off): where the two visits can be compared.
    ``tx`` maps baseline points to follow-up points (LPS mm)."""
    cover = arr(sitk.Resample(sitk.Cast(fu * 0 + 1, sitk.sitkFloat32), base, tx,
                              sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    frame = np.zeros(cover.shape, bool)
    frame[1:-1, 1:-1, 1:-1] = True
    return erode_mm((cover > 0.999) & frame, 5.0, tuple(float(s) for s in base.GetSpacing()))


#: white top-hat size (mm) of the small-bright-structure tests of :func:`z_registered`
_TOPHAT_MM = 6.0


def _tophat_size(sp: tuple[float, ...]) -> list[int]:
    return [max(1, int(round(_TOPHAT_MM / s))) | 1 for s in sp]


def _baseline_bright(b_sharp: NDArray[np.float32], norm: NDArray[np.bool_],
                     tissue: NDArray[np.bool_], sp: tuple[float, ...], hyper_ratio: float
                     ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Structures bright at baseline (vessels with inflow enhancement, fat), grown by
    2 mm: above 1.1 x the 99.5th percentile of tissue, or small and bright (white
    top-hat over ~6 mm above 15 % of the ``norm`` median). ``b_sharp``: the
    baseline before smoothing.

    Returns that mask and the T1w one, where small bright structures count only
    if they are also T1-bright: at least ``hyper_ratio`` x the white-matter level
    (:func:`~mri_safety.change.t1bright.white_matter_level`, the level of the
    T1-bright finding rule). On T1w white matter is the bright tissue and every
    strand of it thinner than the top-hat passes the top-hat test (39-41 % of
    the tissue of the real 4.8 mm position T1s, 97 % of a 3D T1 on the 1 mm
    grid), while vessels with inflow and fat are brighter than white matter.
    """
    bs = b_sharp / float(np.median(b_sharp[norm]))
    tophat = bs - ndi.grey_opening(bs, size=_tophat_size(sp))
    very = bs > np.percentile(bs[tissue], 99.5) * 1.1
    small = tophat > 0.15
    above_wm = bs >= white_matter_level(bs, tissue, hyper_ratio)
    del tophat, bs
    return dilate_mm(very | small, 2.0, sp), dilate_mm(very | (small & above_wm), 2.0, sp)


def _followup_bright(f_sharp: NDArray[np.float32], norm: NDArray[np.bool_],
                     sp: tuple[float, ...]) -> NDArray[np.bool_]:
    """Small bright structures of the follow-up (on the baseline grid), grown by 2 mm."""
    fs = f_sharp / max(float(np.median(f_sharp[norm])), 1e-6)
    return dilate_mm(fs - ndi.grey_opening(fs, size=_tophat_size(sp)) > 0.15, 2.0, sp)


def thick_slices(zp: ZPair) -> bool:
    """Whether the pair's matched resolution is anisotropic, thick 2D slices: the
    coarsest effective axis at least twice the finest."""
    eff = [float(v) for v in zp.info["resolution"]["effective_resolution_mm"]]
    return max(eff) >= 2.0 * min(eff)


def z_registered(rp: RegisteredPair, p: DetectParams, spine: SpineRegions | None = None
                 ) -> ZPair:
    """Steps 3-5 of the module docstring on a :class:`RegisteredPair`; with ``spine``
    (baseline cord/canal, :mod:`mri_safety.change.spine`) the search region is the
    canal, fits use the canal and intensities are in units of the cord median."""
    base, fu = rp.baseline, rp.followup
    base_n4, fu_n4 = rp.baseline_n4, rp.followup_n4
    brain, icv, mask_method = rp.brain, rp.icv, rp.mask_method
    sp = tuple(float(s) for s in base.GetSpacing())
    tx = rp.transform
    b, f, res_info = _profile_matched(base_n4, fu_n4, base, tx)
    covered = covered_region(fu, base, tx)
    if p.smooth_mm > 0:
        sig = [p.smooth_mm / s for s in sp]
        b = ndi.gaussian_filter(b, sig, mode="nearest")
        f = ndi.gaussian_filter(f, sig, mode="nearest")
    # search region: intracranial (extra-axial collections are findings, the brain
    # boundary is never blanket-suppressed); noise and intensity fits use the brain
    if spine is None:
        search = icv & covered
        # tissue: brain minus its outer 2 mm and minus dark CSF, for the intensity and noise fits
        inner = erode_mm(brain, 2.0, sp) & covered
        med0 = float(np.median(b[inner]))
        tissue = inner & (b > 0.5 * med0)
        if tissue.sum() < 1000:
            raise ValueError("too little overlap between follow-up and baseline brain")
        norm = tissue  # intensity unit: tissue median
    else:
        search, tissue, norm = fit_regions(spine, covered)
        brain, mask_method = spine.cord, spine.method
    # follow-up intensities onto the baseline's, leaving out voxels of large true change
    slope, icpt = match_intensity(f, b, tissue)
    f = (slope * f + icpt).astype(np.float32)
    scale = float(np.median(b[norm]))
    b = (b / scale).astype(np.float32)
    # structures bright at baseline (vessels with inflow enhancement, fat),
    # grown by 2 mm: their change between visits is flow / partial volume, not new tissue
    # small bright structures: white top-hat over ~6 mm above 15 % of the tissue median
    bright, bright_t1 = _baseline_bright(arr(base_n4), norm, tissue, sp, p.hyper_ratio)
    f_sharp = arr(sitk.Resample(fu_n4, base, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    fu_bright = _followup_bright(f_sharp, norm, sp)
    f = (f / scale).astype(np.float32)
    # what the follow-up itself shows, for lesion-likeness: the smoothing and the profile
    # matching serve the difference's noise and would dilute a small focus below the level
    f_native = ((slope * f_sharp + icpt) / scale).astype(np.float32)
    del f_sharp  # (a 0.7 mm 3D head holds ~160 MB per float32 array: free them early)
    d = f - b
    g_b = gradient_magnitude(b, sp)
    g = np.maximum(g_b, gradient_magnitude(f, sp))
    d = remove_low_frequency(d, tissue, 25.0, sp)
    model = noise_model(d, g, tissue, delta_mm=p.edge_misregistration_mm)
    # total noise SD: the edge model, or the local robust SD of the change where the
    # real scan-rescan differences are larger than the model says (never smaller)
    # measured where there is signal: the brain, and the search region's voxels of at
    # least half the tissue median at BASELINE (CSF on T2w/T2*w); voxels of near-zero
    # signal (bone, air, CSF on FLAIR/T1w) hold no partial-volume or flow change of
    # their own, and their differences would set the noise of the blocks at the brain
    # surface (with the intracranial mask out to the skull, bone and CSF lowered it on
    # a T2*w and cortical noise became flagged dark foci). Not follow-up-bright voxels:
    # a new extra-axial collection is bright at follow-up only and would raise its own
    # noise (subdural collections vs baseline: 1 of 3 found with them, 2026-12-07).
    signal = search if spine is not None else (search & ((brain & covered) | (b >= 0.5)))
    # per sign (signed_local_robust_sd): an increase's noise leaves the blocks
    # outside the signal out of each window, so a new collection lining the edge of the
    # signal does not set its own noise (subdural collections against the previous
    # visit: 0 of 3 found with the edge extended); a decrease's keeps the edge layer's
    # noise extended outwards: decreases are not searched outside the parenchyma on
    # T2*w/SWI, and with the edge left out the partial-volume noise of CSF interfaces
    # became flagged T2*w dark foci (detect_small.py: 0 -> 4 over 4 coarse pairs)
    sd = np.maximum(model.sd(g), signed_local_robust_sd(d, signal, 20.0, sp))
    del g
    z = np.where(search, d / sd, 0.0).astype(np.float32)
    # share of the noise variance due to BASELINE edges (a new lesion makes follow-up
    # edges, so only the baseline's count as pre-existing interfaces)
    edge_frac = ((model.delta_mm * g_b) ** 2 / np.maximum(sd ** 2, 1e-12)).astype(np.float32)
    ncc = _ncc(b, f, tissue)
    status = "ok"
    if ncc < 0.5 or model.delta_mm > 2.0:
        status = "fail"
    elif ncc < 0.8 or model.delta_mm > 1.0:
        status = "warn"
    f_raw = rp.followup_in_baseline()
    info = {
        "mask_method": mask_method,
        "resolution": res_info,
        "noise": {"s0": round(model.s0, 5), "delta_mm": round(model.delta_mm, 4)},
        "registration": {
            "method": rp.registration["method"], "metric": rp.registration["metric"],
            "init": rp.registration["init"], "ncc_brain": round(ncc, 4),
            "residual_misregistration_mm": round(model.delta_mm, 4),
            "quality": round(max(0.0, ncc), 4), "status": status,
            "seconds": rp.registration["seconds"]},
    }
    return ZPair(z=z, base=b, fu=f, fu_native=f_native, brain=search,
                 parenchyma=brain & covered, tissue=tissue,
                 edge_frac=edge_frac, baseline_bright=bright, baseline_bright_t1=bright_t1,
                 followup_bright=fu_bright,
                 followup_in_baseline=f_raw, transform=tx, info=info)


def _location(c: Component, brain: NDArray[np.bool_], depth_mm: NDArray[np.float32],
              midline: Midline, region: str, atlas: AtlasMap | None = None
              ) -> dict[str, Any]:
    """Brain location of a candidate: tissue depth class, side of the mid-sagittal
    plane, depth from the brain surface and, with ``atlas`` (the baseline's MNI
    mapping), the coarse anatomical region of its voxels and its MNI centroid."""
    ijk = tuple(int(round(v)) for v in c.centroid_voxel)
    ijk = tuple(min(max(0, v), s - 1) for v, s in zip(ijk, brain.shape, strict=True))
    inside = bool(brain[ijk])
    dep = float(depth_mm[ijk]) if inside else 0.0
    if not inside:
        tissue = "outside_brain_parenchyma"
    elif dep < 4.0:
        tissue = "cortical_or_juxtacortical"
    else:
        tissue = "deep"
    loc: dict[str, Any] = {"region": region, "tissue": tissue,
                           "side": midline.side(c.centroid_ras_mm),
                           "depth_from_brain_surface_mm": round(dep, 1)}
    if atlas is not None:
        loc.update(atlas.locate(c.voxels, brain.shape, c.centroid_ras_mm))
    return loc


def new_dark_focus(voxels: NDArray[np.int64], z: NDArray[np.floating],
                   base: NDArray[np.floating], fu: NDArray[np.floating],
                   fu_native: NDArray[np.floating], local: NDArray[np.floating],
                   ratio: float) -> tuple[float, float, float] | None:
    """Is a decrease candidate a new hypointense focus (:data:`T2_DARK_FOCUS`)?

    Over its core (the voxels of ``voxels``, flat indices, where ``|z|`` is at
    least half its peak: a core that scales with the focus, not a rim of
    tissue-level voxels that a strong change spreads to through the smoothing),
    the mean follow-up relative to the ``local`` normal tissue
    (:func:`~mri_safety.change.zmap.local_tissue`; ``base``, ``fu`` and
    ``fu_native`` normalised to the tissue median, on the baseline grid) is at
    most ``1 / ratio`` (smoothed follow-up, or its own resolution, where a focus
    smaller than the slice keeps more of its contrast), and the baseline's is
    above it. Means over the core, not single voxels: tissue texture makes
    single voxels of a fading lesion or of a slight darkening fall below the
    level. Returns (baseline, follow-up) means relative to the local tissue and
    the focus's size in voxels (:func:`deficit_volume` over the whole
    candidate), or None.

    >>> local = np.ones(10, np.float32); z = np.array([-6.0] * 5 + [-1.0] * 5)
    >>> base = np.ones(10); fu = np.full(10, 0.5); vox = np.arange(10)
    >>> fu[5:] = 1.0                          # the rim, at tissue level
    >>> new_dark_focus(vox, z, base, fu, fu, local, 1.2)
    (1.0, 0.5, 5.0)
    >>> new_dark_focus(vox, z, base, 0.9 * base, 0.9 * base, local, 1.2) is None
    True
    """
    zc = np.abs(np.asarray(z).ravel()[voxels])
    if zc.size == 0:
        return None
    core = voxels[zc >= 0.5 * zc.max()]
    loc = np.maximum(np.asarray(local).ravel()[core], 1e-6)
    b = float(np.mean(np.asarray(base).ravel()[core] / loc))
    f = min(float(np.mean(np.asarray(a).ravel()[core] / loc)) for a in (fu, fu_native))
    if f <= 1.0 / ratio < b:
        return round(b, 3), round(f, 3), round(deficit_volume(voxels, base, fu_native, local), 2)
    return None


def _deficit(voxels: NDArray[np.int64], base: NDArray[np.floating],
             fu: NDArray[np.floating], local: NDArray[np.floating]) -> NDArray[np.floating]:
    """(baseline - follow-up) / local tissue at the flat indices ``voxels``."""
    loc = np.maximum(np.asarray(local).ravel()[voxels], 1e-6)
    return (np.asarray(base).ravel()[voxels] - np.asarray(fu).ravel()[voxels]) / loc


def focus_reach_mm(voxels: NDArray[np.int64], base: NDArray[np.floating],
                   fu: NDArray[np.floating], local: NDArray[np.floating],
                   dist_mm: NDArray[np.floating]) -> float:
    """How far (mm) a dark focus reaches from a structure: the largest of
    ``dist_mm`` (distance to it, e.g. the baseline ventricles, world mm) over
    the voxels of ``voxels`` whose deficit (:func:`deficit_volume`) is at
    least half the deepest: the focus, not the smoothing's rim around it.

    >>> base = np.ones(5); loc = np.ones(5); dist = np.arange(5.0)
    >>> focus_reach_mm(np.arange(5), base, np.array([0.2, 0.2, 0.3, 0.9, 0.95]), loc, dist)
    2.0
    """
    d = _deficit(voxels, base, fu, local)
    if d.size == 0 or float(d.max()) <= 0:
        return 0.0
    return float(np.asarray(dist_mm).ravel()[voxels][d >= 0.5 * d.max()].max())


def deficit_volume(voxels: NDArray[np.int64], base: NDArray[np.floating],
                   fu: NDArray[np.floating], local: NDArray[np.floating]) -> float:
    """Size (voxels) of a new dark focus: its intensity deficit summed over the
    candidate, divided by its deepest point.

    Deficit = (baseline - follow-up) / local tissue per voxel of ``voxels`` (flat
    indices; arrays on one grid, the follow-up at its own resolution), negative
    values clipped. Partial volume spreads a focus's deficit over more voxels
    but keeps its sum, so this is the volume of a focus as dark as the darkest
    voxel that removes the same signal: a 6 mm cyst in 4 mm slices measures
    about its own volume, where the voxels with ``|z|`` over half its peak
    (the noise model raises the noise at its own edges) cover a fraction of it
    and those below the level, partial-volumed slices included, twice it.
    Smaller than a voxel, its darkest voxel is partial-volumed too and the
    size is over-estimated by up to the inverse of that fraction.

    >>> base = np.ones(6); loc = np.ones(6)
    >>> fu = np.array([0.0, 0.0, 0.5, 0.5, 1.0, 1.25])  # 2 dark voxels, 2 half-dark
    >>> deficit_volume(np.arange(6), base, fu, loc)
    3.0
    """
    d = _deficit(voxels, base, fu, local)
    top = float(d.max()) if d.size else 0.0
    return float(np.clip(d, 0.0, None).sum() / top) if top > 0 else 0.0


def detect_pair(baseline: sitk.Image, followup: sitk.Image, contrast: str = "flair",
                region: str = "brain", params: DetectParams | None = None,
                extra: list[tuple[sitk.Image, sitk.Image, str]] | None = None,
                within: WithinVisit | None = None) -> ChangeResult:
    """Detect candidate new abnormalities of ``followup`` relative to ``baseline``.

    ``extra``: further (baseline, follow-up, contrast) pairs; their z-maps are
    brought to the main baseline grid and a candidate whose mean z there, in the
    direction a lesion changes that contrast (:func:`agreement_sign`), reaches
    ``extra_contrast_z`` gains ``extra_contrast_bonus`` evidence.
    ``within``: ADC maps (``dwi``) or pre-contrast T1w (``t1ce``) of the two visits,
    see :func:`mri_safety.change.multicontrast.apply_within_visit`.
    """
    p = params or load_params()
    _check_contrast(contrast)
    t0 = time.perf_counter()
    rp = register_pair(baseline, followup, threads=p.registration_threads, seed=p.seed,
                       region=region, contrast=contrast)
    return detect_registered(rp, contrast, region, p, extra, started=t0, within=within)


def _given(rp: RegisteredPair) -> RegisteredPair:
    return rp


def _check_contrast(contrast: str) -> str:
    c = contrast.lower()
    if c not in FINDINGS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(FINDINGS)}")
    return c


def detect_registered(rp: RegisteredPair, contrast: str = "flair", region: str = "brain",
                      params: DetectParams | None = None,
                      extra: list[tuple[sitk.Image, sitk.Image, str]] | None = None,
                      started: float | None = None,
                      within: WithinVisit | None = None,
                      extra_registered: list[tuple[RegisteredPair, str]] | None = None,
                      own_z: ZPair | None = None,
                      extra_zpairs: Sequence[ZPair | None] | None = None,
                      ) -> ChangeResult:
    """Steps 3-7 of the module docstring on a :class:`RegisteredPair`:
    ``detect_pair(b, f, ...) == detect_registered(register_pair(b, f, ...), ...)``.

    Uses only the detection parameters of ``params`` (not
    :data:`REGISTER_PARAMS`, except for registering ``extra`` pairs).
    ``started``: ``time.perf_counter()`` at the start of the work, for
    ``parameters["seconds"]`` (default: now). ``extra_registered``: extra
    contrasts as already registered pairs (the pipeline reuses the other
    series' register stage), treated like ``extra``. ``own_z`` and
    ``extra_zpairs`` (one entry per ``extra_registered`` pair, None = compute):
    :func:`z_registered` of ``rp`` and of those pairs with these ``params``,
    already computed (brain only; the pipeline computes each pooled pair's
    z-map once for both detections that use it); the result is the same.
    """
    p = params or load_params()
    c = _check_contrast(contrast)
    t0 = time.perf_counter() if started is None else started
    # spine: search the baseline canal; location by vertebral level (mri_safety.change.spine)
    sctx = (spine_regions(rp.baseline_n4, c, followup=rp.followup_n4, transform=rp.transform)
            if region == "spine" else None)
    if own_z is not None and sctx is not None:
        raise ValueError("own_z is for brain comparisons (the spine z-map needs its regions)")
    zp = own_z if own_z is not None else z_registered(rp, p, sctx)
    base = rp.baseline
    sp = tuple(float(s) for s in base.GetSpacing())
    aff = sitk_affine_ras(base)
    allowed_pos = zp.brain.copy()
    allowed_neg = zp.brain.copy()
    # where increases may be dipole partners (below), when that differs from allowed_pos
    partner_pos: NDArray[np.bool_] | None = None
    partner_neg: NDArray[np.bool_] | None = None
    bright_now: NDArray[np.bool_] | None = None  # lesion-like follow-up level reached
    local_t2: NDArray[np.float32] | None = None  # T2_DARK_FOCUS: local normal tissue
    if c in LESION_LIKE:
        # lesion-like: brighter than the surrounding normal tissue by hyper_ratio
        # after smoothing, or at the follow-up's own resolution, where a small focus keeps
        # its contrast (a 3 mm lesion in 4 mm slices loses a third of it to the profile
        # blur); the latter only on baseline tissue of normal intensity: on partial-volume
        # CSF (ventricle, sulcal and cistern margins) a native-resolution increase is as
        # well explained by the thick slices' partial volume shifting, or by CSF flow
        local = local_tissue(zp.base, zp.tissue, p.hyper_ratio, p.local_reference_mm, sp)
        level = level_from_local(local, p.hyper_ratio)
        native = (zp.fu_native >= level) & (zp.base >= 1.0 / p.hyper_ratio)
        bright_now = (zp.fu >= level) | native
        allowed_pos &= bright_now
        if c in T2_DARK_FOCUS and sctx is None:
            local_t2 = local  # the tissue a new hypointense focus must be darker than
    else:
        # T1w/SWI/...: a new focus arises in tissue of normal baseline intensity; changes of
        # structures already abnormal at baseline (vessels with variable inflow, fat, CSF)
        # are flow/partial-volume artefacts, not new findings
        lo, hi = np.percentile(zp.base[zp.tissue], [p.normal_range_pct, 100 - p.normal_range_pct])
        normal = (zp.base >= lo) & (zp.base <= hi)
        if c in DARK_FOCUS:
            # hypointense relative to the surrounding normal tissue, the mirror of the
            # lesion-like level: 1 / hyper_ratio x the local tissue where it is brighter
            # than the median (grey matter on T2*w), never above the median
            dark = lesion_level(zp.base, zp.tissue, p.hyper_ratio, p.local_reference_mm, sp,
                                sign=-1)
            allowed_neg &= (zp.fu <= dark) | (zp.fu_native <= dark)
            # ... in the brain: a haemorrhage or microbleed is a focus in the parenchyma;
            # between the brain and the skull, T2*w darkens with bone, air and the
            # susceptibility edges at the skull, which move with the head and the brain
            # surface (a new extra-axial collection shows on FLAIR, T2w and T1w);
            # outside the brain a decrease may still be a dipole partner
            partner_neg = allowed_neg.copy()
            allowed_neg &= zp.parenchyma
        else:
            # T1w: only structures brighter than white matter (white matter is the bright
            # tissue of a T1w image, and its thin strands pass the top-hat test)
            normal &= ~(zp.baseline_bright_t1 if c == "t1w" and not thick_slices(zp)
                        else zp.baseline_bright)
        allowed_pos &= normal
        allowed_neg &= normal
        if c == "t1w":
            # a T1-dark finding is darker than all the baseline tissue within a voxel
            # (mri_safety.change.t1dark); the decreases it leaves out, thick-slice partial
            # volume at grey/white interfaces, still pair with an increase beside them
            partner_neg = allowed_neg.copy()
            allowed_neg &= below_envelope(zp.base, zp.fu)
            # without contrast agent a small new T1-bright structure is inflow in a vessel,
            # unless it is part of a hyperintense region too thick for a vessel (a
            # haematoma or fat focus); post-contrast (t1ce) keeps them all
            # (mri_safety.change.t1bright)
            level_t1 = white_matter_level(zp.base, zp.tissue, p.hyper_ratio)
            native_hyper = zp.fu_native >= level_t1
            allowed_pos &= ~vessel_like(zp.followup_bright, native_hyper, sp)
            partner_pos = allowed_pos.copy()
            # and a T1-bright finding is brighter than white matter by hyper_ratio: an
            # increase within normal tissue intensity (grey matter turning white-matter-
            # like) is thick-slice partial volume shifting with the slice positions
            allowed_pos &= (zp.fu >= level_t1) | native_hyper
    # a candidate must span at least min_resels resolution elements of the matched
    # acquisitions (effective voxel after profile matching, at least the smoothing FWHM)
    eff = [max(float(v), 2.3548 * p.smooth_mm)
           for v in zp.info["resolution"]["effective_resolution_mm"]]
    min_vol = max(p.min_volume_mm3, p.min_resels * float(np.prod(eff)))
    extra_z: list[tuple[str, NDArray[np.float32]]] = []
    extra_info: list[dict[str, Any]] = []
    extra_def: list[NDArray[np.bool_]] = []
    extra_ok: list[dict[str, Any]] = []  # info of the extras in extra_z
    # a FLAIR pair of the same visits on the main grid (baseline, follow-up, defined)
    fluid: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]] | None = None
    # extra pairs, registered here (images) or already registered (pipeline)
    extra_items: list[tuple[Callable[[], RegisteredPair], str, ZPair | None]] = [
        (partial(register_pair, eb, ef, threads=p.registration_threads, seed=p.seed), name,
         None) for eb, ef, name in extra or []]
    given_z = list(extra_zpairs or [None] * len(extra_registered or []))
    if len(given_z) != len(extra_registered or []):
        raise ValueError("extra_zpairs needs one entry per extra_registered pair")
    extra_items += [(partial(_given, erp), name, gz)
                    for (erp, name), gz in zip(extra_registered or [], given_z, strict=True)]
    for get_rp, name, gz in extra_items:
        try:
            erp = get_rp()
            ez = gz if gz is not None else z_registered(erp, p)
            eb = erp.baseline
            # extra baseline -> main baseline (rigid), then its z onto the main grid
            r = register(base, sitk.Cast(eb, sitk.sitkFloat32),
                         fixed_mask=img_like(dilate_mm(zp.brain, 5.0, sp).astype(np.uint8), base),
                         params=RigidParams(threads=p.registration_threads, seed=p.seed,
                                           **DETECT_RIGID))
            zimg = sitk.Resample(img_like(ez.z, eb), base, r.transform, sitk.sitkLinear, 0.0,
                                 sitk.sitkFloat32)
            dimg = sitk.Resample(img_like(ez.brain.astype(np.uint8), eb), base, r.transform,
                                 sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            extra_z.append((name.lower(), arr(zimg)))
            extra_def.append(arr(dimg) > 0)
            if name.lower() == "flair" and c in FLUID_BRIGHT and sctx is None:
                # its normalised visits on the main grid: is a T2w increase in fluid?
                fb, ff = (arr(sitk.Resample(img_like(a, eb), base, r.transform,
                                            sitk.sitkLinear, 0.0, sitk.sitkFloat32))
                          for a in (ez.base, ez.fu))
                fluid = (fb.astype(np.float32, copy=False), ff.astype(np.float32, copy=False),
                         extra_def[-1])
            extra_ok.append({"contrast": name.lower(), "registration": ez.info["registration"],
                             "noise": ez.info["noise"]})
            extra_info.append(extra_ok[-1])
        except (ValueError, RuntimeError) as e:
            log.warning("extra contrast %s skipped: %s", name, e)
            extra_info.append({"contrast": name.lower(), "error": str(e)})
    # co-directional contrasts (a new lesion is bright on FLAIR and T2w alike) are pooled
    # voxel-wise before extraction (Stouffer, correlation-adjusted); others only add
    # evidence to candidates found on the main contrast
    pooled = [k for k, (nm, _) in enumerate(extra_z) if nm in POOLED.get(c, ())]
    z_used = zp.z
    rho: list[float] = []
    if pooled:
        z_used, rho = combine_z(zp.z, [extra_z[k][1] for k in pooled],
                                [extra_def[k] for k in pooled], zp.tissue)
        z_used = np.where(zp.brain, z_used, 0.0).astype(np.float32)
        for k, rk in zip(pooled, rho, strict=True):
            extra_ok[k]["pooled_rho"] = rk
    # new fluid where there was tissue (a cyst): T2w up and FLAIR down cancel in the pooled
    # map (or leave the FLAIR fall), so it is found on the fluid map instead, and is neither
    # a lesion-like increase nor a decrease of the pooled map (mri_safety.change.fluid)
    fz: NDArray[np.float32] | None = None
    fluid_comps: list[Component] = []
    spaces, space_sizes = np.zeros(0, np.int32), np.zeros(1, np.int64)
    shift_reach = np.zeros(0, bool)
    kf = [k for k in pooled if extra_z[k][0] == "flair"]
    rho_f = rho[pooled.index(kf[0])] if kf else 1.0
    if fluid is not None and kf and bright_now is not None and rho_f < 1.0:
        now_fluid = new_fluid(*fluid, bright_now, p.hyper_ratio) & zp.parenchyma
        allowed_pos &= ~now_fluid
        allowed_neg &= ~now_fluid
        fz = fluid_z(zp.z, extra_z[kf[0]][1], extra_def[kf[0]], rho_f)
        fluid_comps = extract(fz, aff, p.z_low, p.z_seed, min_vol, allowed_pos=now_fluid,
                              signs=(1,))
    if fluid_comps and fluid is not None:
        spaces, space_sizes = baseline_fluid_spaces(fluid[0], fluid[2], zp.brain, p.hyper_ratio)
        # where a tissue shift can move a fluid edge: dipole_mm, or a neighbouring voxel
        shift_reach = (dilate_mm(spaces > 0, p.dipole_mm, sp)
                       | ndi.binary_dilation(spaces > 0, structure=np.ones((3, 3, 3), bool)))
    comps = extract(z_used, aff, p.z_low, p.z_seed, min_vol,
                    allowed_pos=allowed_pos, allowed_neg=allowed_neg)
    z_review = review_threshold(int(zp.brain.sum()), sp, p.smooth_mm, p.review_fwe_alpha)
    depth = distance_to_mm(~zp.parenchyma, sp)  # mm into the parenchyma, 0 outside
    # the side of a finding is the side of the mid-sagittal plane (mri_safety.change.midline)
    midline = (find_midline(rp.baseline_n4, zp.parenchyma, p.seed, p.registration_threads)
               if sctx is None and zp.parenchyma.any() else centroid_midline(zp.brain, base))
    atlas = (AtlasMap.of(rp.subject_to_mni, aff) if sctx is None else None)
    reg_status = zp.info["registration"]["status"]
    cands: list[dict[str, Any]] = []
    flat_edge = zp.edge_frac.ravel()
    # dipoles: an increase next to a decrease of the other sign is the signature of
    # local misregistration / tissue shift (e.g. brain sag with patient position)
    # (T1w: increases within normal tissue intensity are not reported but still pair
    # with a decrease beside them, since together they are the misregistration pattern)
    partners = comps if partner_pos is None and partner_neg is None else extract(
        z_used, aff, p.z_low, p.z_seed, min_vol,
        allowed_pos=allowed_pos if partner_pos is None else partner_pos,
        allowed_neg=allowed_neg if partner_neg is None else partner_neg)
    near: dict[int, NDArray[np.bool_]] = {}
    for sgn in (1, -1):
        m = np.zeros(zp.z.size, bool)
        for comp in partners:
            if comp.sign == sgn:
                m[comp.voxels] = True
        m3 = m.reshape(zp.z.shape)
        # within dipole_mm or in a neighbouring voxel (thick slices are further apart)
        near[sgn] = (dilate_mm(m3, p.dipole_mm, sp)
                     | ndi.binary_dilation(m3, structure=np.ones((3, 3, 3), bool))).ravel()
    # tissue that became ventricular CSF (enlarged ventricles): candidates mostly there are
    # marked, for the pipeline to attach to a flagged ventricular-enlargement finding
    sp3 = (float(sp[0]), float(sp[1]), float(sp[2]))
    grown = (new_ventricular_csf(zp.base, zp.fu, zp.parenchyma, sp3, c)
             if sctx is None and c in CSF_GAIN_SIGN else None)
    # ... less the voxels where another contrast changed the way CSF cannot
    against = csf_contradicted(dict(extra_z), p.extra_contrast_z) if grown is not None else None
    on_csf = grown & ~against if grown is not None and against is not None else None
    # FLAIR-hyperintense at follow-up: a part of a "fluid at both visits" candidate that is not
    flair_bright = fluid[1] >= p.hyper_ratio if fluid is not None else None
    vdist: NDArray[np.float32] | None = None  # distance to the baseline ventricles, mm (lazy)
    n_lesion_map = len(comps)
    comps = comps + fluid_comps
    for n_comp, comp in enumerate(comps):
        is_fluid = n_comp >= n_lesion_map  # from the fluid map
        ctype, reportable = FINDINGS[c][comp.sign] if not is_fluid else ("new_fluid_space", True)
        vfrac = (margin_fraction(comp.voxels, grown)
                 if grown is not None and comp.sign == CSF_GAIN_SIGN[c] else 0.0)
        loc = _location(comp, zp.parenchyma, depth, midline, region, atlas)
        inside = np.asarray(zp.parenchyma.ravel()[comp.voxels], bool)
        extra_axial = float(inside.mean()) < 0.5
        if extra_axial:
            # outside the parenchyma, inside the intracranial mask: only a collection of
            # clinically relevant size counts (vessels/sinuses with variable flow live here)
            ctype = "extra_axial_change"
            loc["tissue"] = "extra_axial"
            if comp.volume_mm3 < p.extra_axial_min_volume_mm3:
                reportable = False
        contrasts = [c]
        reasons = [f"peak z {abs(comp.peak_z):.1f} vs review threshold {z_review:.2f}"]
        if is_fluid and fluid is not None:
            contrasts.append("flair")
            fb_m, ff_m = (float(a.ravel()[comp.voxels].mean()) for a in fluid[:2])
            reasons[0] = (f"peak z {comp.peak_z:.1f} on the fluid map (z_{c} - z_flair) / "
                          f"sqrt(2 - 2 rho) vs review threshold {z_review:.2f}")
            reasons.append(f"bright on {c} and dark on FLAIR at follow-up, tissue on FLAIR at "
                           f"baseline (FLAIR {fb_m:.2f} -> {ff_m:.2f} x tissue): fluid where "
                           f"there was tissue (a cyst or cavity)")
            wider = widened_space(comp.voxels, spaces, space_sizes, shift_reach)
            if wider:
                reportable = False
                reasons.append(f"continuous with a space fluid at baseline and larger than "
                               f"itself ({wider} voxels), and within {p.dipole_mm:g} mm or a "
                               f"voxel of it: a widened sulcus, cistern or ventricle "
                               f"(atrophy, tissue shift), not a new cyst")
        in_fluid = (fluid_at_both_visits(*fluid, comp.voxels, p.hyper_ratio)
                    if fluid is not None and comp.sign > 0 and not extra_axial
                    and not is_fluid else None)
        if in_fluid is not None and flair_bright is not None:
            # ... unless a part of candidate size is FLAIR-hyperintense at follow-up (a mass
            # or lesion merged with a cistern or the ventricles' rim: the mean hides it)
            piece_mm3, piece_z = largest_piece(comp.voxels, flair_bright, z_used, sp3)
            if piece_mm3 >= min_vol and piece_z >= z_review:
                reasons.append(f"dark on FLAIR at both visits on average ({in_fluid[0]:.2f} "
                               f"and {in_fluid[1]:.2f} x tissue), but {piece_mm3:.0f} mm3 of "
                               f"it are FLAIR-hyperintense at follow-up (peak z "
                               f"{piece_z:.1f}): not a fluid space")
                in_fluid = None
        if in_fluid is not None:
            reportable = False
            reasons.append(f"dark on FLAIR at both visits ({in_fluid[0]:.2f} and "
                           f"{in_fluid[1]:.2f} x tissue): a fluid space (CSF flow, partial "
                           f"volume), not new tissue")
        if sctx is not None:  # spine: compartment, level, cord / syrinx / canal type
            sd = describe(sctx, comp.voxels, comp.sign, c, zp.base, zp.fu, comp.volume_mm3,
                          p.extra_axial_min_volume_mm3)
            ctype, reportable, loc = sd.type, sd.reportable, sd.location
            reasons += sd.reasons
        evidence = abs(comp.peak_z)
        # NEEDS_T2_CHANGE extras covering the candidate: name -> changed there (either sign)
        t2_changed: dict[str, bool] = {}
        for k, (name, ezm) in enumerate(extra_z):
            if is_fluid and k in kf:  # in the fluid map already (with the other sign)
                continue
            mean_z = float(ezm.ravel()[comp.voxels].mean())
            if name in NEEDS_T2_CHANGE.get(c, ()) and bool(extra_def[k].ravel()[comp.voxels].all()):
                t2_changed[name] = abs(mean_z) >= p.extra_contrast_z
            rel = agreement_sign(c, name)
            # mean z of the extra contrast in the direction that agrees (0: no relation)
            mz = float(rel * comp.sign * mean_z) if rel else 0.0
            comp.extra[name] = mz
            if mz >= p.extra_contrast_z:
                contrasts.append(name)
                if k in pooled:  # already in z_used: no bonus on top
                    reasons.append(f"{name} agrees (mean z {mz:.1f}; pooled into the z-map)")
                else:
                    evidence += p.extra_contrast_bonus
                    reasons.append(f"{name} agrees (mean z {mz:.1f})")
        if t2_changed and not any(t2_changed.values()):
            evidence -= p.extra_contrast_bonus
            reasons.append(f"no change on {', '.join(t2_changed)} here (|mean z| < "
                           f"{p.extra_contrast_z:g}), where new tissue seen on {c} would "
                           f"show: evidence -{p.extra_contrast_bonus:g}")
        # (the fluid map's candidates: a tissue shift at a CSF edge is told by
        # widened_space; the pooled map's decreases are the cyst's own FLAIR fall)
        if not is_fluid and bool(near[-comp.sign][comp.voxels].any()):
            evidence -= p.dipole_penalty
            reasons.append(f"opposite-sign change within {p.dipole_mm:g} mm (misregistration "
                           f"or tissue-shift pattern): evidence -{p.dipole_penalty:g}")
        edge_share = float(flat_edge[comp.voxels].mean())
        if edge_share > 0.5:
            evidence -= p.edge_penalty
            reasons.append(f"at a baseline intensity edge ({100 * edge_share:.0f}% of noise "
                           f"from misregistration): evidence -{p.edge_penalty:g}")
        if vfrac >= MARGIN_FRACTION and against is not None and on_csf is not None:
            # CSF is CSF on every contrast: where another contrast changed the other way
            # (a mass bright on T2w and on FLAIR, where new CSF is dark) it is tissue. A
            # mass beside the ventricles can merge with their rim into one component, so
            # such a part of candidate size keeps the whole candidate apart
            vfrac = margin_fraction(comp.voxels, on_csf)
            piece_mm3, piece_z = largest_piece(comp.voxels, against, z_used, sp3)
            if vfrac < MARGIN_FRACTION or (piece_mm3 >= min_vol and piece_z >= z_review):
                names = ", ".join(nm for nm, _ in extra_z if nm in CSF_GAIN_SIGN)
                reasons.append(
                    f"on what the {c} ventricle rule takes for new ventricular CSF, but "
                    f"{names} changed the other way on {piece_mm3:.0f} mm3 of it (peak z "
                    f"{piece_z:.1f}): not CSF, not attached to a ventricular enlargement")
                vfrac = 0.0
        if local_t2 is not None and comp.sign < 0 and not is_fluid and not extra_axial:
            dark_rel = new_dark_focus(comp.voxels, z_used, zp.base, zp.fu, zp.fu_native,
                                      local_t2, p.hyper_ratio)
            d_min = p.t2_dark_min_diameter_mm
            size_mm3 = dark_rel[2] * float(np.prod(sp)) if dark_rel is not None else 0.0
            if dark_rel is not None and vfrac >= MARGIN_FRACTION:
                # on what the ventricle rule takes for new ventricular CSF: enlargement
                # widens the ventricles all round, by well under a millimetre a year in
                # atrophy; a dark focus that reaches d_min into the parenchyma and is at
                # least half as deep as it is wide is a mass beside them (a cyst, a bleed)
                if vdist is None:
                    # inf everywhere without ventricles: no margin candidate then anyway
                    vdist = distance_to_mm(ventricle_mask(zp.base, zp.parenchyma, sp3, "dark"),
                                           sp3)
                reach = focus_reach_mm(comp.voxels, zp.base, zp.fu_native, local_t2, vdist)
                d_eq = float(np.cbrt(6.0 * size_mm3 / np.pi))  # equivalent-sphere diameter
                if reach >= max(d_min, d_eq / 2.0):
                    reasons.append(f"on what the {c} ventricle rule takes for new ventricular "
                                   f"CSF, but it reaches {reach:.1f} mm from the baseline "
                                   f"ventricle wall ({d_eq:.1f} mm wide): a focal mass beside "
                                   f"the ventricles, not their enlargement")
                    vfrac = 0.0
                else:
                    dark_rel = None
            if dark_rel is not None:
                big = size_mm3 >= np.pi / 6.0 * d_min ** 3
                ctype, reportable = "new_t2_hypointensity", big
                reasons.append(f"hypointense relative to the surrounding tissue at follow-up "
                               f"({dark_rel[1]:.2f} x where |z| is at least half its peak; "
                               f"below 1/{p.hyper_ratio:g}) and not at baseline "
                               f"({dark_rel[0]:.2f} x): a new dark focus (blood products, "
                               f"calcification or fluid) of {size_mm3:.0f} mm3 (its signal "
                               f"deficit over its deepest point)")
                if not big:
                    reasons.append(f"smaller than a {d_min:g} mm sphere: on {c} a dark dot "
                                   f"of microbleed size is as often a perivascular space or a "
                                   f"vessel (microbleeds: T2*w/SWI)")
        if c in LESION_LIKE and comp.sign > 0 and not is_fluid:
            reasons.append("follow-up hyperintense relative to the surrounding tissue "
                           "(lesion-like)")
        if not reportable and sctx is None and not is_fluid and ctype != "new_t2_hypointensity":
            reasons.append(f"extra-axial and smaller than {p.extra_axial_min_volume_mm3:g} mm3"
                           if extra_axial else f"sign not reported as a finding for {c}")
        if vfrac >= MARGIN_FRACTION:
            reasons.append(f"{100 * vfrac:.0f}% on tissue that became ventricular CSF "
                           "(ventricular-enlargement pattern)")
        if reg_status == "fail":
            reasons.append("registration failed: candidates not reliable")
        score = float(1.0 / (1.0 + np.exp(-1.5 * (evidence - z_review))))
        flagged = bool(reportable and score >= REVIEW_SCORE and reg_status != "fail")
        cands.append({
            "type": ctype, "flagged": flagged, "score": round(score, 4),
            "evidence_z": round(evidence, 3),
            "volume_mm3": round(comp.volume_mm3, 2),
            "centroid_ras_mm": [round(v, 2) for v in comp.centroid_ras_mm],
            "centroid_baseline_voxel": [round(v, 2) for v in comp.centroid_voxel],
            "peak_z": round(comp.peak_z, 3), "mean_z": round(comp.mean_z, 3),
            "sign": comp.sign,
            "location": loc,
            "contrasts": contrasts, "reasons": reasons,
            "ventricle_margin": bool(vfrac >= MARGIN_FRACTION),
        })
    order = sorted(range(len(cands)), key=lambda i: (-cands[i]["score"], -cands[i]["evidence_z"],
                                                      cands[i]["centroid_baseline_voxel"]))
    cands = [cands[i] for i in order]
    comps = [comps[i] for i in order]
    for n, cd in enumerate(cands, start=1):
        cd["id"] = n
    cands = [{"id": cd["id"], **{k: v for k, v in cd.items() if k != "id"}} for cd in cands]
    labels = label_map(comps, zp.z.shape)
    registration = dict(zp.info["registration"])
    parameters = {
        **p.model_dump(), "contrast": c, "region": region,
        "z_review": round(z_review, 3), "review_score": REVIEW_SCORE,
        "min_volume_used_mm3": round(min_vol, 2),
        "review_rule": ("flagged when logistic(1.5 * (evidence - z_review)) >= 0.5, z_review = "
                        "one-sided Gaussian quantile at review_fwe_alpha / resels of the search "
                        "region"),
        "noise_model": zp.info["noise"], "resolution": zp.info["resolution"],
        "mask_method": zp.info["mask_method"], "extra_contrasts": extra_info,
        "midline": midline.record(),
        **({"anatomical_atlas": atlas.record()} if atlas is not None else {}),
        **({"spine": sctx.info} if sctx is not None else {}),
        **({"fluid_map": {"map": "zmap_fluid.nii.gz", "rule": (
            f"(z_{c} - z_flair) / sqrt(2 - 2 rho), where FLAIR was >= 1 / hyper_ratio x tissue "
            f"at baseline and is below it at follow-up and {c} reached the lesion-like level "
            "(new fluid: mri_safety.change.fluid)"), "candidates": len(fluid_comps)}}
           if fz is not None else {}),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    res = ChangeResult(candidates=cands, labels=labels, z=z_used,
                       followup_in_baseline=zp.followup_in_baseline, baseline=base,
                       registration=registration, parameters=parameters, components=comps,
                       midline=midline, transform=zp.transform,
                       maps={} if fz is None else {"zmap_fluid": fz})
    # dwi + ADC, t1ce + pre-contrast T1w of the same visits (mri_safety.change.multicontrast)
    return apply_within_visit(res, rp, zp, c, p, within)


def _nifti(a: NDArray[np.generic], like: sitk.Image) -> nib.Nifti1Image:
    """``a`` (``[i, j, k]``) as NIfTI with ``like``'s RAS affine. NIfTI stores voxels
    in Fortran order, so an ``[i, j, k]`` view of a SimpleITK ``[k, j, i]`` array is
    written as it is (a C-order copy of a 0.7 mm head would cost 160 MB more; the
    file bytes are the same either way)."""
    aff = sitk_affine_ras(like)
    out = nib.Nifti1Image(np.asarray(a), aff)
    out.set_qform(aff, code=1)
    out.set_sform(aff, code=1)
    return out


def _load(path: Path) -> sitk.Image:
    """The image at ``path`` as analysed: float32, on its analysis grid
    (:func:`mri_safety.preprocess.grid.to_analysis_grid`: 1 mm when its voxels are
    under 0.5 mm3, else its own grid). Every stage that analyses a series reads
    it through here, so they share one grid."""
    return to_analysis_grid(_load_native(path))


def _load_native(path: Path) -> sitk.Image:
    """The image at ``path`` on its own grid (float32); a clear error naming the file."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: file not found")
    try:
        img = sitk.ReadImage(str(p), sitk.sitkFloat32)
    except RuntimeError as e:
        raise ValueError(f"{p}: cannot read image ({e})") from e
    if img.GetDimension() != 3:
        raise ValueError(f"{p}: expected a 3D image, got {img.GetDimension()}D")
    mm = sitk.MinimumMaximumImageFilter()
    mm.Execute(img)
    if not mm.GetMaximum() > mm.GetMinimum():  # also NaN
        raise ValueError(f"{p}: image has no signal (every voxel is {mm.GetMinimum():g})")
    return img


def _itk_reason(e: RuntimeError) -> str:
    """The one-line reason of an ITK exception (its text after ``ITK ERROR:``)."""
    text = " ".join(str(e).split())
    for key in ("ITK ERROR:", "sitk::ERROR:"):
        if key in text:
            text = text.split(key, 1)[1]
            text = text.split("):", 1)[1] if "):" in text[:120] else text
            break
    return text.strip()


def _drop_seconds(e: dict[str, Any]) -> dict[str, Any]:
    if "registration" not in e:
        return e
    return {**e, "registration": {k: v for k, v in e["registration"].items() if k != "seconds"}}


def _native_reference(path: Path) -> sitk.Image:
    """An empty image (uint8) with the geometry of the file at ``path``."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    ref = sitk.Image(list(r.GetSize()), sitk.sitkUInt8)
    ref.SetSpacing(r.GetSpacing())
    ref.SetOrigin(r.GetOrigin())
    ref.SetDirection(r.GetDirection())
    return ref


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
            and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection())


def to_native_grid(res: ChangeResult, baseline: Path, followup: Path) -> ChangeResult:
    """``res`` with its maps on the grid of the BASELINE FILE, when the comparison ran
    on an analysis grid (:func:`_load`); else ``res`` itself.

    Labels by nearest neighbour (a candidate keeps its id), the z-map and other maps
    linearly, ``followup_in_baseline`` from the native follow-up through the
    registration; ``centroid_baseline_voxel`` becomes the native voxel index of
    ``centroid_ras_mm``. Volumes, scores and world positions are those of the
    analysis; ``parameters["analysis_grid"]`` records both grids."""
    ref = _native_reference(baseline)
    if _same_grid(ref, res.baseline):
        return res

    def back(a: NDArray[np.generic], interp: int, pixel: int) -> NDArray[Any]:
        img = sitk.Resample(img_like(a, res.baseline), ref, sitk.Transform(), interp, 0.0, pixel)
        # [i, j, k] view of the [k, j, i] copy (one native-size array, not two)
        return sitk.GetArrayFromImage(img).transpose(2, 1, 0)

    tx = res.transform if res.transform is not None else sitk.Transform()
    fu = sitk.Resample(_load_native(followup), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ras_to_ijk = np.linalg.inv(sitk_affine_ras(ref))
    cands = []
    for c in res.candidates:
        ijk = ras_to_ijk[:3, :3] @ np.asarray(c["centroid_ras_mm"], float) + ras_to_ijk[:3, 3]
        cands.append({**c, "centroid_baseline_voxel": [round(float(v), 2) for v in ijk]})
    params = {**res.parameters, "analysis_grid": {
        "native_spacing_mm": [round(float(v), 4) for v in ref.GetSpacing()],
        "spacing_mm": [round(float(v), 4) for v in res.baseline.GetSpacing()],
        "rule": "voxels under 0.5 mm3 analysed at 1 mm (mri_safety.preprocess.grid); maps "
                "brought back to the baseline's own grid"}}
    return replace(
        res, candidates=cands, parameters=params,
        labels=back(res.labels.astype(np.int32), sitk.sitkNearestNeighbor, sitk.sitkInt32),
        z=back(res.z.astype(np.float32), sitk.sitkLinear, sitk.sitkFloat32),
        maps={k: back(m.astype(np.float32), sitk.sitkLinear, sitk.sitkFloat32)
              for k, m in res.maps.items()},
        # the native baseline is needed for its geometry only (``ref``, uint8, no pixels read)
        followup_in_baseline=fu, baseline=ref)


def write_outputs(res: ChangeResult, out: Path, inputs: dict[str, Any],
                  native: tuple[Path, Path] | None = None) -> dict[str, Any]:
    """Write the documented outputs of ``mri-safety compare`` into ``out``; return the JSON dict.

    ``native``: the (baseline, follow-up) files; when the comparison ran on an
    analysis grid the maps are written on the baseline file's own grid
    (:func:`to_native_grid`). Times are left out of ``candidates.json`` so two
    runs give identical files.
    """
    out.mkdir(parents=True, exist_ok=True)
    if native is not None:
        res = to_native_grid(res, *native)
    params = {k: v for k, v in res.parameters.items() if k != "seconds"}
    reg = {k: v for k, v in res.registration.items() if k != "seconds"}
    params["extra_contrasts"] = [_drop_seconds(e) for e in params.get("extra_contrasts", [])]
    doc = {"format": "mri-safety candidates v1", "inputs": inputs,
           "n_flagged": sum(1 for c in res.candidates if c["flagged"]),
           "candidates": res.candidates, "registration": reg, "parameters": params}
    (out / "candidates.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    # (copy=False and [i, j, k] views: a 0.7 mm head's maps are 160 MB each)
    nib.save(_nifti(res.labels.astype(np.int32, copy=False), res.baseline),
             str(out / "candidates.nii.gz"))
    nib.save(_nifti(res.z.astype(np.float32, copy=False), res.baseline), str(out / "zmap.nii.gz"))
    fu = sitk.GetArrayFromImage(res.followup_in_baseline).transpose(2, 1, 0)
    nib.save(_nifti(fu.astype(np.float32, copy=False), res.baseline),
             str(out / "followup_in_baseline.nii.gz"))
    del fu
    for name, m in res.maps.items():
        nib.save(_nifti(m.astype(np.float32, copy=False), res.baseline),
                 str(out / f"{name}.nii.gz"))
    return doc


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def compare_main(baseline: Path, followup: Path, out: Path, region: str = "brain",
                 contrast: str = "flair", extra: list[tuple[Path, Path, str]] | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """``mri-safety compare``: detect candidates and write ``out``/candidates.json + NIfTI maps.

    Outputs (all maps in the BASELINE image's voxel space, RAS+ affine of the
    baseline): ``candidates.json`` (``candidates``, ``registration``,
    ``parameters``), ``candidates.nii.gz`` (int32 labels = candidate id),
    ``zmap.nii.gz`` (float32 signed z), ``followup_in_baseline.nii.gz``.
    Bad input raises ``ValueError`` naming the file; a bad extra contrast pair
    is skipped with a warning and recorded in ``parameters.extra_contrasts``.
    ``threads``: ITK's global thread count and the registration threads
    (default: ITK's default and ``registration_threads`` of
    configs/detection.yaml); the steps whose results would depend on it run
    with their own fixed counts, so the outputs do not (only
    ``parameters.registration_threads`` records it). The pipeline's detect stage
    writes the same outputs.
    Returns the JSON document.
    """
    if region not in ("brain", "spine"):
        raise ValueError(f"unknown region {region!r}; expected 'brain' or 'spine'")
    b = _load(Path(baseline))
    f = _load(Path(followup))
    ex: list[tuple[sitk.Image, sitk.Image, str]] = []
    ex_inputs = []
    for eb, ef, name in extra or []:
        try:
            ex.append((_load(Path(eb)), _load(Path(ef)), name))
            ex_inputs.append({"baseline": Path(eb).name, "followup": Path(ef).name,
                              "contrast": name})
        except ValueError as e:
            log.warning("extra contrast %s skipped: %s", name, e)
            ex_inputs.append({"baseline": Path(eb).name, "followup": Path(ef).name,
                              "contrast": name, "error": str(e)})
    ex, within = within_visit_from_extra(contrast, ex)  # dwi + adc, t1ce + t1w (pre)
    p = load_params() if threads is None else load_params(registration_threads=threads)
    try:
        with nullcontext() if threads is None else itk_threads(threads):
            res = detect_pair(b, f, contrast=contrast, region=region, params=p, extra=ex,
                              within=within)
    except RuntimeError as e:  # ITK: e.g. images that do not overlap in world space
        raise ValueError(f"{Path(followup)} could not be compared with {Path(baseline)}: "
                         f"{_itk_reason(e)}") from e
    inputs = {"baseline": Path(baseline).name, "baseline_sha256": _digest(Path(baseline)),
              "followup": Path(followup).name, "followup_sha256": _digest(Path(followup)),
              "extra": ex_inputs}
    return write_outputs(res, Path(out), inputs, native=(Path(baseline), Path(followup)))
