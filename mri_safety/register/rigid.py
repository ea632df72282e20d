"""Rigid (6 dof) and optional affine registration of a follow-up image to its baseline.

Images are SimpleITK images (LPS+ geometry, world mm). The returned transform
maps **fixed (baseline) points to moving (follow-up) points** (ITK convention),
so ``resample(moving, fixed, result.transform)`` puts the follow-up on the
baseline grid.

Default backend (``"sitk"``): SimpleITK ``ImageRegistrationMethod`` with
Euler3D (then optionally Affine), Mattes mutual information, regular-step
gradient descent, scales from physical shift. The multi-resolution pyramid is
built here rather than with ``SetShrinkFactorsPerLevel`` because ITK shrinks
every axis by the same factor, which ruins thick-slice 2D images (a 4.8 mm
slice shrunk 4x becomes 19 mm): each level has a *target spacing in mm* and
each axis is shrunk by ``round(target / spacing)`` (at least 1). The fixed
image is cropped to its mask's bounding box (plus a margin) so the metric is
evaluated where it matters and the cost does not depend on the field of view.

Determinism (see also ``RigidParams.round_decimals``): metric sampling is
either ``"regular"`` (a fixed grid) or
``"random"`` with a fixed seed, so the sample points never depend on threads;
the metric and optimizer run on ``metric_threads`` ITK threads (default 1,
with the process-wide ITK default set to the same for the call), because ITK's
multithreaded metric sums per-thread partial results in a run-dependent order:
two repeated 2-thread runs differed at ~2e-11 mm, which no fixed rounding can
hide when a value sits on a rounding boundary (observed). With one metric
thread, runs on any machine, local or SLURM, are bit-identical for the same
parameters whatever ``threads`` or the machine's default thread count.

Initialisation tries the scanner (physical) geometry and a centre-of-mass
alignment, runs the coarsest level from both, and keeps the better metric
value, which makes different slice thickness, 2D vs 3D and different patient
positions (HFS/HFP/decubitus) start in the right basin.

The ``"ants"`` backend calls ``ants.registration`` (antspyx) in its own
temporary directory (antspyx globs the output prefix; a stray file crashed it)
with ``ANTS_RANDOM_SEED`` set and one ITK thread for bit-identical results.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from mri_safety.register.transforms import read_transform, to_affine_transform
from mri_safety.threads import itk_threads


@dataclass(frozen=True)
class RigidParams:
    """Parameters of :func:`register` (all lengths in world mm).

    backend: ``"sitk"`` (default) or ``"ants"``.
    transform: ``"rigid"`` (6 dof) or ``"affine"`` (rigid, then 12 dof).
    level_spacing_mm: target voxel spacing of each pyramid level, coarse to fine;
        0 means native resolution.
    smoothing_mm: Gaussian sigma applied to both images at each level (mm).
    sampling: ``"random"`` (fixed ``seed``), ``"regular"`` grid or ``"none"`` (all voxels).
    sampling_fraction: fraction of fixed (cropped) voxels sampled per level.
    seed: seed of the random metric sampling.
    bins: histogram bins of Mattes mutual information.
    step_mm: initial (largest) optimizer step per level, mm of voxel shift.
    min_step_mm: optimizer stops when the step falls below this, per level.
    iterations: maximum optimizer iterations per level.
    relaxation: step shrink factor on direction change (regular-step GD).
    crop_margin_mm: margin around the fixed mask bounding box kept for the metric.
    init: ``"auto"`` (best of ``"physical"`` and ``"moments"`` at the coarsest
        level), ``"physical"`` (identity in scanner coordinates) or ``"moments"``.
    threads: kept for callers; the image filters of the stage (pyramid,
        upsampling) use the process-wide ITK default and are exact for any
        thread count, so the result does not depend on it.
    metric_threads: ITK threads of the metric/optimizer (default 1: bit-identical
        repeated runs; more threads are faster but repeated runs can differ at
        ~1e-11 mm, see the module docstring).
    round_decimals: final transform parameters are rounded to this many decimals
        (mm / rad), geometrically irrelevant; kept so parameters print and
        compare cleanly.
    ants_type: antspyx ``type_of_transform`` for the ``"ants"`` backend
        (default chosen from ``transform``).
    upsample_mm: thick-slice moving images (2D stacks) are B-spline resampled,
        along their own thick axes only, to ``max(level spacing, upsample_mm)``
        at the levels finer than their slices (None: never). Without this the
        metric gradient is taken on the 4-5 mm slice grid and linear
        interpolation between slices biased the optimum along the slice axis
        (0.36 mm TRE on a 4 mm slab stack; 0.08 mm with it). An axis counts as
        thick when its spacing exceeds 1.5x the target and 2x the moving's
        finest spacing. Only the part of the moving image that covers the
        (cropped) fixed image plus ``crop_margin_mm`` is resampled.
    gradient_filter: where the metric's image gradients come from ITK's
        gradient filter over whole images (the ITK default) rather than central
        differences at the sample points: ``"all"`` levels, ``"coarse"`` (all
        but the finest level; default) or ``"none"``. At the finest level the
        filter's gradient image, computed on the moving grid, biased the
        optimum of a 4 mm slab stack along the slab axis (and costs a full
        gradient image of a 1 mm volume); at the coarse levels it is cheap and
        its smoothing keeps 90-degree repositioned (decubitus) pairs in the
        right basin, which central differences there did not.
    """

    backend: Literal["sitk", "ants"] = "sitk"
    transform: Literal["rigid", "affine"] = "rigid"
    level_spacing_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    sampling: Literal["random", "regular", "none"] = "random"
    sampling_fraction: tuple[float, ...] = (0.25, 0.10, 0.10)
    seed: int = 20261125
    bins: int = 32
    step_mm: tuple[float, ...] = (4.0, 1.0, 0.5)
    min_step_mm: tuple[float, ...] = (0.05, 0.01, 0.0005)
    iterations: int = 200
    relaxation: float = 0.5
    crop_margin_mm: float = 10.0
    init: Literal["auto", "physical", "moments"] = "auto"
    threads: int = 2
    metric_threads: int = 1
    ants_type: str | None = None
    round_decimals: int = 9
    upsample_mm: float | None = 1.0
    gradient_filter: Literal["all", "coarse", "none"] = "coarse"


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    transform: fixed -> moving point mapping (LPS mm); Euler3DTransform for
        rigid, AffineTransform for affine.
    metric: final Mattes MI value at the finest level (negative; lower is better;
        NaN for the ants backend).
    init: initialisation that was kept.
    iterations: optimizer iterations per level.
    stop: optimizer stop condition of the last level.
    seconds: wall time of the registration.
    backend: backend used.
    """

    transform: sitk.Transform
    metric: float
    init: str
    iterations: list[int] = field(default_factory=list)
    stop: str = ""
    seconds: float = 0.0
    backend: str = "sitk"


def _bbox_crop(img: sitk.Image, mask: sitk.Image,
               margin_mm: float) -> tuple[sitk.Image, sitk.Image]:
    """Crop ``img`` and ``mask`` (same grid) to the mask's bounding box + margin (mm)."""
    lab = sitk.LabelShapeStatisticsImageFilter()
    lab.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not lab.HasLabel(1):
        raise ValueError("fixed mask is empty")
    bb = lab.GetBoundingBox(1)
    dim = img.GetDimension()
    lo = [max(0, bb[i] - int(np.ceil(margin_mm / img.GetSpacing()[i]))) for i in range(dim)]
    hi = [min(img.GetSize()[i], bb[i] + bb[i + dim] + int(np.ceil(margin_mm / img.GetSpacing()[i])))
          for i in range(dim)]
    size = [h - lo_ for lo_, h in zip(lo, hi, strict=False)]
    return (sitk.RegionOfInterest(img, size, lo), sitk.RegionOfInterest(mask, size, lo))


def _level(img: sitk.Image, spacing_mm: float, sigma_mm: float,
           is_mask: bool = False) -> sitk.Image:
    """Shrink each axis by ``round(spacing_mm / spacing)`` (block mean), then smooth (sigma mm).

    Block-averaging first and smoothing the small image is equivalent to
    smoothing first (both are linear low-pass filters; the block mean is the
    same box either way) and costs a fraction of the time on 1 mm volumes.
    """
    out = img
    if spacing_mm > 0:
        f = [max(1, int(round(spacing_mm / s))) for s in img.GetSpacing()]
        f = [min(fi, max(1, sz // 4)) for fi, sz in zip(f, img.GetSize(), strict=False)]
        if any(fi > 1 for fi in f):
            if is_mask:
                # a voxel of the shrunk mask is inside when the voxel it samples is
                out = sitk.Shrink(out, f)
            else:
                out = sitk.BinShrink(out, f)
    if sigma_mm > 0 and not is_mask:
        out = sitk.SmoothingRecursiveGaussian(out, sigma_mm)
    return out


def _thick_axes(moving: sitk.Image, target_mm: float) -> list[float] | None:
    """New spacing for the moving image's thick axes at a level of ``target_mm`` (None: keep)."""
    sp = moving.GetSpacing()
    finest = min(sp)
    new = [target_mm if (s > 1.5 * target_mm and s > 2.0 * finest) else s for s in sp]
    return None if list(new) == list(sp) else new


def _upsample_region(moving: sitk.Image, spacing: list[float], fixed: sitk.Image,
                     transform: sitk.Transform, margin_mm: float) -> sitk.Image:
    """B-spline resample ``moving`` to ``spacing`` (same direction) where it covers ``fixed``.

    The corners of the fixed grid are mapped through ``transform`` (fixed ->
    moving points), bounded in the moving's index space and padded by
    ``margin_mm``; the new grid keeps the moving's direction and the physical
    extent of the covered slabs (a slab of thickness t centred at c spans
    c +- t/2).
    """
    size_f = np.asarray(fixed.GetSize())
    corners = [[(size_f[d] - 1) * ((c >> d) & 1) for d in range(3)] for c in range(8)]
    pts = [transform.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in c])) for c in corners]
    idx = np.array([moving.TransformPhysicalPointToContinuousIndex(p) for p in pts])
    sp_old = np.asarray(moving.GetSpacing())
    pad = np.ceil(margin_mm / sp_old)
    lo = np.maximum(np.floor(idx.min(0) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0) + pad), np.asarray(moving.GetSize()) - 1).astype(int)
    if np.any(hi < lo):  # no overlap: keep the whole image
        lo, hi = np.zeros(3, int), np.asarray(moving.GetSize()) - 1
    sp_new = np.asarray(spacing, dtype=float)
    # continuous index range covered, including half a voxel each side
    start = lo - 0.5 + 0.5 * sp_new / sp_old
    extent = (hi - lo + 1) * sp_old
    size = np.maximum(1, np.floor(extent / sp_new + 1e-6)).astype(int)
    origin = moving.TransformContinuousIndexToPhysicalPoint([float(v) for v in start])
    return sitk.Resample(moving, [int(v) for v in size], sitk.Transform(), sitk.sitkBSpline,
                         origin, [float(v) for v in sp_new], moving.GetDirection(), 0.0,
                         sitk.sitkFloat32)


def upsample_thick_axes(image: sitk.Image, target_mm: float = 1.0) -> sitk.Image:
    """B-spline resample the thick axes of a slice stack to ``target_mm`` (other axes kept).

    An axis is thick when its spacing exceeds ``1.5 * target_mm`` and twice the
    image's finest spacing. Same direction and physical extent (slab edges);
    returns the image unchanged (not copied) when no axis is thick. World
    geometry: SimpleITK LPS mm.
    """
    new = _thick_axes(image, target_mm)
    if new is None:
        return image
    return _upsample_region(sitk.Cast(image, sitk.sitkFloat32), new, image,
                            sitk.Transform(3, sitk.sitkIdentity), 0.0)


def _method(p: RigidParams, lvl: int, fixed_mask: sitk.Image | None,
            moving_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(p.metric_threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=p.bins)
    if p.sampling == "random":
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(p.sampling_fraction[lvl], p.seed)
    elif p.sampling == "regular":
        reg.SetMetricSamplingStrategy(reg.REGULAR)
        reg.SetMetricSamplingPercentage(p.sampling_fraction[lvl], p.seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    finest = lvl == len(p.level_spacing_mm) - 1
    if p.gradient_filter == "none" or (p.gradient_filter == "coarse" and finest):
        reg.MetricUseFixedImageGradientFilterOff()
        reg.MetricUseMovingImageGradientFilterOff()
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=p.step_mm[lvl], minStep=p.min_step_mm[lvl],
        numberOfIterations=p.iterations, relaxationFactor=p.relaxation,
        gradientMagnitudeTolerance=1e-10)
    reg.SetOptimizerScalesFromPhysicalShift()
    return reg


def _initial(fixed: sitk.Image, moving: sitk.Image, kind: str,
             fixed_mask: sitk.Image | None) -> sitk.Euler3DTransform:
    """Initial Euler3D transform centred on the fixed mask (or image) centre."""
    if fixed_mask is not None:
        lab = sitk.LabelShapeStatisticsImageFilter()
        lab.Execute(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
        centre = np.asarray(lab.GetCentroid(1))
    else:
        size = np.asarray(fixed.GetSize(), dtype=float)
        centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint(list((size - 1) / 2)))
    t = sitk.Euler3DTransform()
    t.SetCenter([float(c) for c in centre])
    if kind == "moments":
        mi = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS)
        off = np.asarray(mi.TransformPoint([0.0, 0.0, 0.0]))
        t.SetTranslation([float(v) for v in off])
    return t


def _run_sitk(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None,
              moving_mask: sitk.Image | None, p: RigidParams) -> RegistrationResult:
    t0 = time.perf_counter()
    fx = sitk.Cast(fixed, sitk.sitkFloat32)
    mv = sitk.Cast(moving, sitk.sitkFloat32)
    fm = None if fixed_mask is None else sitk.Cast(fixed_mask > 0, sitk.sitkUInt8)
    mm = None if moving_mask is None else sitk.Cast(moving_mask > 0, sitk.sitkUInt8)
    inits = ["physical", "moments"] if p.init == "auto" else [p.init]
    starts = {kind: _initial(fx, mv, kind, fm) for kind in inits}
    if fm is not None:
        fx, fm = _bbox_crop(fx, fm, p.crop_margin_mm)
    n = len(p.level_spacing_mm)
    levels_f = [_level(fx, p.level_spacing_mm[i], p.smoothing_mm[i]) for i in range(n)]

    def moving_level(i: int, transform: sitk.Transform) -> sitk.Image:
        target = p.level_spacing_mm[i] if p.level_spacing_mm[i] > 0 else min(fx.GetSpacing())
        new = None if p.upsample_mm is None else _thick_axes(mv, max(target, p.upsample_mm))
        if new is None:
            return _level(mv, p.level_spacing_mm[i], p.smoothing_mm[i])
        up = _upsample_region(mv, new, fx, transform, p.crop_margin_mm)
        return _level(up, p.level_spacing_mm[i], p.smoothing_mm[i])

    levels_fm = [None if fm is None else _level(fm, p.level_spacing_mm[i], 0, True)
                 for i in range(n)]

    iters: list[int] = []
    best: tuple[float, str, sitk.Transform] | None = None
    moving0 = _level(mv, p.level_spacing_mm[0], p.smoothing_mm[0])
    failed: RuntimeError | None = None
    for kind in inits:
        t = starts[kind]
        reg = _method(p, 0, levels_fm[0], mm)
        reg.SetInitialTransform(t, inPlace=True)
        try:
            with itk_threads(p.metric_threads):
                reg.Execute(levels_f[0], moving0)
        except RuntimeError as exc:  # e.g. no overlap from this start (frames apart)
            failed = exc
            continue
        val = reg.GetMetricValue()
        if best is None or val < best[0]:
            best = (val, kind, t)
            first_iters = reg.GetOptimizerIteration()
    if best is None:
        assert failed is not None
        raise failed
    metric, init_kind, current = best
    iters.append(first_iters)
    stop = ""
    stages: list[str] = ["rigid"] + (["affine"] if p.transform == "affine" else [])
    for stage in stages:
        start = 1 if stage == "rigid" else max(0, n - 2)
        if stage == "affine":
            aff = sitk.AffineTransform(3)
            e = current
            assert isinstance(e, sitk.Euler3DTransform)
            aff.SetCenter(e.GetCenter())
            aff.SetMatrix(e.GetMatrix())
            aff.SetTranslation(e.GetTranslation())
            current = aff
        for lvl in range(start, n):
            reg = _method(p, lvl, levels_fm[lvl], mm)
            reg.SetInitialTransform(current, inPlace=True)
            mv_lvl = moving0 if lvl == 0 else moving_level(lvl, current)
            with itk_threads(p.metric_threads):
                reg.Execute(levels_f[lvl], mv_lvl)
            metric = reg.GetMetricValue()
            iters.append(reg.GetOptimizerIteration())
            stop = reg.GetOptimizerStopConditionDescription()
    current.SetParameters([float(v) for v in np.round(current.GetParameters(), p.round_decimals)])
    return RegistrationResult(transform=current, metric=float(metric), init=init_kind,
                              iterations=iters, stop=stop,
                              seconds=time.perf_counter() - t0, backend="sitk")


def _to_ants(img: sitk.Image):  # noqa: ANN202 - ants has no type hints
    import ants

    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)
    return ants.from_numpy(arr, origin=list(img.GetOrigin()), spacing=list(img.GetSpacing()),
                           direction=np.asarray(img.GetDirection()).reshape(3, 3))


def _run_ants(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None,
              moving_mask: sitk.Image | None, p: RigidParams) -> RegistrationResult:
    import ants

    t0 = time.perf_counter()
    kind = p.ants_type or ("Rigid" if p.transform == "rigid" else "Affine")
    os.environ["ANTS_RANDOM_SEED"] = str(p.seed)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    fa = _to_ants(sitk.Cast(fixed, sitk.sitkFloat32))
    ma = _to_ants(sitk.Cast(moving, sitk.sitkFloat32))
    kw = {}
    if fixed_mask is not None:
        kw["mask"] = _to_ants(sitk.Cast(fixed_mask > 0, sitk.sitkFloat32))
    if moving_mask is not None:
        kw["moving_mask"] = _to_ants(sitk.Cast(moving_mask > 0, sitk.sitkFloat32))
    with tempfile.TemporaryDirectory(prefix="mri_safety_ants_") as tmp:
        out = ants.registration(fa, ma, type_of_transform=kind,
                                outprefix=os.path.join(tmp, "reg_"), **kw)
        tf = read_transform(out["fwdtransforms"][0])
    t = to_affine_transform(tf)
    return RegistrationResult(transform=t, metric=float("nan"), init="ants",
                              seconds=time.perf_counter() - t0, backend="ants")


def register(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None = None,
             moving_mask: sitk.Image | None = None,
             params: RigidParams | None = None) -> RegistrationResult:
    """Register ``moving`` (follow-up) to ``fixed`` (baseline); rigid by default.

    ``fixed_mask`` (baseline brain or intracranial mask, same grid as ``fixed``)
    restricts the metric and the cropped region; ``moving_mask`` optionally
    restricts the moving side. The images may differ in grid, slice thickness,
    orientation and dimensionality of acquisition (2D slab vs 3D).
    """
    p = params or RigidParams()
    n = len(p.level_spacing_mm)
    if not (len(p.smoothing_mm) == len(p.sampling_fraction) == len(p.step_mm)
            == len(p.min_step_mm) == n):
        raise ValueError("RigidParams: per-level tuples must have the same length")
    if fixed.GetDimension() != 3 or moving.GetDimension() != 3:
        raise ValueError("register: fixed and moving must be 3D images")
    if fixed_mask is not None and (fixed_mask.GetSize() != fixed.GetSize()):
        raise ValueError("register: fixed_mask must be on the fixed image grid")
    if p.backend == "ants":
        return _run_ants(fixed, moving, fixed_mask, moving_mask, p)
    if p.backend != "sitk":
        raise ValueError(f"unknown registration backend {p.backend!r}")
    return _run_sitk(fixed, moving, fixed_mask, moving_mask, p)


def resample(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
             interpolator: int = sitk.sitkLinear, default: float = 0.0,
             pixel_type: int | None = None) -> sitk.Image:
    """Resample ``moving`` onto the ``reference`` grid through ``transform`` (reference -> moving).

    Use ``sitk.sitkNearestNeighbor`` for label images. Output pixel type defaults
    to float32 for intensity interpolators and the input type for nearest neighbour.
    """
    if pixel_type is None:
        pixel_type = (moving.GetPixelID() if interpolator == sitk.sitkNearestNeighbor
                      else sitk.sitkFloat32)
    return sitk.Resample(moving, reference, transform, interpolator, default, pixel_type)
