"""Cord-focused registration of a follow-up spine series to its baseline.

Method: a **mask-weighted rigid** step (Euler 3D, Mattes mutual information
restricted to the dilated baseline canal) followed by a **constrained
deformable** step: a coarse cubic B-spline (control points every ``mesh_mm``,
default 20 mm, i.e. about one vertebral level) optimised with L-BFGS-B on the
same masked metric. Why: neck flexion/extension between visits bends the
cervical spine smoothly, so one rigid transform cannot fit the whole field of
view; a per-level piecewise rigid model needs level boundaries and blending,
whereas a coarse B-spline is smooth by construction, cannot fold at this
spacing for physiological bends, and stays close to rigid within a level.
The metric is restricted to the canal (cord + CSF) dilated by
``mask_margin_mm`` so the neck muscles and skin, which move differently, do
not drive the cord alignment.

Determinism: every metric uses all voxels of the mask (sampling strategy
NONE, no random sampling), and the registration runs with a fixed number of
threads (a stage parameter, default 1). Results are identical whatever the
process-wide ITK thread count (verified in ``tests/test_register_spine.py``).

Conventions: SimpleITK images (LPS+ world mm). The returned transform maps
**baseline (fixed) points to follow-up (moving) points**, LPS mm, so
``sitk.Resample(followup, baseline, T)`` brings the follow-up onto the
baseline grid. The rigid part is written as an ITK ``.tfm`` text file and the
deformable part as a displacement field ``.nii.gz`` (LPS mm vectors, as ITK
and ANTs expect) by :func:`write_spine_transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from mri_safety.register.rigid import upsample_thick_axes
from mri_safety.threads import itk_threads


@dataclass(frozen=True)
class SpineRegistration:
    """Result of :func:`register_spine`.

    ``rigid``: Euler3DTransform (baseline -> follow-up, LPS mm).
    ``deformable``: BSplineTransform applied before ``rigid`` (or None when
    ``mesh_mm`` is None), i.e. ``T(x) = rigid(deformable(x))``.
    ``transform``: the composite ``T``. ``metric``: final metric value
    (Mattes MI, lower is better).
    """

    rigid: sitk.Euler3DTransform
    deformable: sitk.BSplineTransform | None
    transform: sitk.CompositeTransform
    metric: float


def _check(image: sitk.Image, name: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a scalar 3D image")


def metric_mask(canal: sitk.Image, margin_mm: float = 6.0) -> sitk.Image:
    """Dilate a canal (or cord) mask by ``margin_mm`` (world mm) for the registration metric."""
    sp = np.asarray(canal.GetSpacing())
    radius = [max(1, int(round(margin_mm / s))) for s in sp]
    m = sitk.Cast(canal > 0, sitk.sitkUInt8)
    return sitk.BinaryDilate(m, radius, sitk.sitkBall)


def register_spine(baseline: sitk.Image, followup: sitk.Image, baseline_canal: sitk.Image, *,
                   mask_margin_mm: float = 6.0, mesh_mm: float | None = 20.0,
                   threads: int = 1, bins: int = 32, upsample_mm: float | None = 1.0,
                   gradient_filter: bool = True) -> SpineRegistration:
    """Register ``followup`` to ``baseline`` with a cord-focused rigid + coarse B-spline.

    ``baseline_canal``: canal (CSF + cord) or cord mask on the baseline grid
    (e.g. from :func:`mri_safety.preprocess.spine.spine_masks`); it is dilated
    by ``mask_margin_mm`` and restricts the metric. ``mesh_mm``: B-spline
    control-point spacing in mm (None: rigid only). ``threads``: ITK threads
    of the registration (fixed, so results do not depend on the machine).
    ``upsample_mm``: a thick-slice follow-up (2D stack, e.g. 3 mm sagittal) is
    first B-spline resampled along its thick axes to this spacing (None: never;
    see :func:`mri_safety.register.rigid.upsample_thick_axes`).
    ``gradient_filter``: ITK whole-image gradient filter (True, default: every
    mask voxel is sampled, so a gradient image is the cheaper way) or central
    differences at the sample points (False).
    Returns transforms mapping baseline to follow-up points (LPS mm).
    """
    _check(baseline, "baseline")
    _check(followup, "followup")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    with itk_threads(threads):
        if upsample_mm is not None:
            followup = upsample_thick_axes(followup, upsample_mm)
        return _register(baseline, followup, baseline_canal, mask_margin_mm, mesh_mm, threads,
                         bins, gradient_filter)


def _register(baseline: sitk.Image, followup: sitk.Image, baseline_canal: sitk.Image,
              mask_margin_mm: float, mesh_mm: float | None, threads: int,
              bins: int, gradient_filter: bool = True) -> SpineRegistration:
    fixed = sitk.Cast(baseline, sitk.sitkFloat32)
    moving = sitk.Cast(followup, sitk.sitkFloat32)
    mask = metric_mask(baseline_canal, mask_margin_mm)
    if sitk.GetArrayViewFromImage(mask).sum() == 0:
        raise ValueError("baseline_canal mask is empty; cannot focus the registration on the cord")
    # centre of rotation at the mask centroid, so the rotation is about the cord
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    centre = stats.GetCentroid(1)

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(threads)
    reg.SetMetricAsMattesMutualInformation(bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    if not gradient_filter:
        reg.MetricUseFixedImageGradientFilterOff()
        reg.MetricUseMovingImageGradientFilterOff()
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(fixed, moving)
    metric = reg.GetMetricValue()

    bspline: sitk.BSplineTransform | None = None
    if mesh_mm is not None:
        # the deformable step only sees the masked region: crop the fixed image to
        # the mask's bounding box (the metric cost scales with the fixed grid)
        fixed, mask = _crop_to_mask(fixed, mask)
        extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
        mesh = [max(1, int(round(e / mesh_mm))) for e in extent]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
        reg2 = sitk.ImageRegistrationMethod()
        reg2.SetNumberOfThreads(threads)
        reg2.SetMetricAsMattesMutualInformation(bins)
        reg2.SetMetricSamplingStrategy(reg2.NONE)
        reg2.SetMetricFixedMask(mask)
        reg2.SetInterpolator(sitk.sitkLinear)
        if not gradient_filter:
            reg2.MetricUseFixedImageGradientFilterOff()
            reg2.MetricUseMovingImageGradientFilterOff()
        reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-6, numberOfIterations=50,
                                  maximumNumberOfCorrections=5,
                                  maximumNumberOfFunctionEvaluations=100)
        reg2.SetShrinkFactorsPerLevel([2, 1])
        reg2.SetSmoothingSigmasPerLevel([1.0, 0.0])
        reg2.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg2.SetMovingInitialTransform(rigid)
        reg2.SetInitialTransform(bspline, inPlace=True)
        reg2.Execute(fixed, moving)
        metric = reg2.GetMetricValue()

    comp = sitk.CompositeTransform(3)
    comp.AddTransform(rigid)
    if bspline is not None:
        comp.AddTransform(bspline)
    return SpineRegistration(rigid=rigid, deformable=bspline, transform=comp, metric=float(metric))


def _crop_to_mask(image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Crop ``image`` and ``mask`` to the mask's bounding box (index space, no resampling)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    bb = stats.GetBoundingBox(1)
    start, size = list(bb[:3]), list(bb[3:])
    return (sitk.RegionOfInterest(image, size, start), sitk.RegionOfInterest(mask, size, start))


def transform_parameters(result: SpineRegistration) -> NDArray[np.float64]:
    """All parameters of the result (rigid then B-spline), for determinism checks."""
    p = list(result.rigid.GetParameters()) + list(result.rigid.GetFixedParameters())
    if result.deformable is not None:
        p += list(result.deformable.GetParameters())
    return np.asarray(p, dtype=np.float64)


def displacement_field(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """Dense displacement field ``T(x) - x`` (LPS mm, vector float64) on ``reference``'s grid."""
    f = sitk.TransformToDisplacementFieldFilter()
    f.SetReferenceImage(reference)
    f.SetOutputPixelType(sitk.sitkVectorFloat64)
    return f.Execute(transform)


def write_spine_transform(result: SpineRegistration, reference: sitk.Image,
                          out_prefix: str | Path) -> tuple[Path, Path | None]:
    """Write ``<prefix>_rigid.tfm`` (ITK text) and ``<prefix>_warp.nii.gz`` (displacement field).

    The warp holds the deformable part only (``deformable(x) - x``, LPS mm, on
    ``reference``'s grid); the full mapping is ``rigid(x + warp(x))``.
    Returns the two paths (the second is None for a rigid-only result).
    """
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tfm = prefix.with_name(prefix.name + "_rigid.tfm")
    sitk.WriteTransform(result.rigid, str(tfm))
    warp: Path | None = None
    if result.deformable is not None:
        warp = prefix.with_name(prefix.name + "_warp.nii.gz")
        sitk.WriteImage(displacement_field(result.deformable, reference), str(warp))
    return tfm, warp


def read_spine_transform(tfm: str | Path, warp: str | Path | None) -> sitk.CompositeTransform:
    """Read files from :func:`write_spine_transform` back into one composite transform."""
    try:
        rigid = sitk.ReadTransform(str(tfm))
    except RuntimeError as e:
        raise ValueError(f"{tfm}: cannot read transform ({e})") from e
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(rigid)
    if warp is not None:
        try:
            field = sitk.ReadImage(str(warp), sitk.sitkVectorFloat64)
        except RuntimeError as e:
            raise ValueError(f"{warp}: cannot read displacement field ({e})") from e
        comp.AddTransform(sitk.DisplacementFieldTransform(field))
    return comp


# --------------------------------------------------------------------------- synthetic truth


def flexion_map(points: NDArray[np.float64], centre: NDArray[np.float64], z_range: tuple[float,
                float], max_angle_deg: float, translation_mm: NDArray[np.float64]
                ) -> NDArray[np.float64]:
    """Smooth known bend psi (follow-up point -> baseline point), LPS mm, for synthetic tests.

    A rotation about the left-right axis (LPS x) through ``centre`` whose angle
    grows linearly with S (LPS z) from 0 at ``z_range[0]`` to
    ``max_angle_deg`` at ``z_range[1]`` (flexion), then a translation.
    ``points``: ``(n, 3)``.
    """
    p = np.asarray(points, dtype=np.float64)
    t = np.clip((p[:, 2] - z_range[0]) / (z_range[1] - z_range[0]), 0.0, 1.0)
    th = np.deg2rad(max_angle_deg) * t
    d = p - centre
    c, s = np.cos(th), np.sin(th)
    out = np.empty_like(p)
    out[:, 0] = d[:, 0]
    out[:, 1] = c * d[:, 1] - s * d[:, 2]
    out[:, 2] = s * d[:, 1] + c * d[:, 2]
    return out + centre + np.asarray(translation_mm, dtype=np.float64)


def _grid_points(reference: sitk.Image) -> NDArray[np.float64]:
    size = reference.GetSize()
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    ijk = np.column_stack([ii.ravel(), jj.ravel(), kk.ravel()]).astype(np.float64)
    d = np.asarray(reference.GetDirection()).reshape(3, 3)
    s = np.asarray(reference.GetSpacing())
    return np.asarray(reference.GetOrigin()) + (ijk * s) @ d.T


def synthetic_followup(baseline: sitk.Image, *, max_angle_deg: float = 6.0,
                       translation_mm: tuple[float, float, float] = (1.5, -2.0, 2.5),
                       bias: float = 0.1, noise: float = 0.02, seed: int = 0
                       ) -> tuple[sitk.Image, dict[str, object]]:
    """A synthetic follow-up of ``baseline`` bent by :func:`flexion_map`, with bias and noise.

    The follow-up is ``F(q) = B(psi(q))`` on the baseline grid (B-spline
    interpolation), times a smooth multiplicative bias ``1 + bias * ...``,
    plus Gaussian noise of ``noise`` x the 99th intensity percentile (seeded).
    Returns the image and the parameters of ``psi`` (keys ``centre``,
    ``z_range``, ``max_angle_deg``, ``translation_mm``) for
    :func:`flexion_map`. The true baseline -> follow-up mapping is psi^-1, so
    the TRE of an estimate ``T`` at baseline point p is ``|psi(T(p)) - p|``.
    """
    b = sitk.Cast(baseline, sitk.sitkFloat32)
    pts = _grid_points(b)
    zmin, zmax = float(pts[:, 2].min()), float(pts[:, 2].max())
    centre = pts.mean(0)
    params: dict[str, object] = {"centre": centre, "z_range": (zmin, zmax),
                                 "max_angle_deg": max_angle_deg,
                                 "translation_mm": np.asarray(translation_mm, dtype=np.float64)}
    psi = flexion_map(pts, centre, (zmin, zmax), max_angle_deg, np.asarray(translation_mm))
    disp = (psi - pts).reshape(tuple(b.GetSize()[::-1]) + (3,))
    field = sitk.GetImageFromArray(disp.astype(np.float64), isVector=True)
    field.CopyInformation(b)
    tx = sitk.DisplacementFieldTransform(field)
    warped = sitk.Resample(b, b, tx, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(warped).astype(np.float64)
    rng = np.random.default_rng(seed)
    nz, ny, nx = arr.shape
    z, y, x = np.meshgrid(np.linspace(0, 1, nz), np.linspace(0, 1, ny), np.linspace(0, 1, nx),
                          indexing="ij")
    field_b = 1.0 + bias * np.sin(np.pi * (0.7 * x + 0.5 * y + 0.9 * z))
    p99 = float(np.percentile(arr, 99))
    arr = np.clip(arr, 0, None) * field_b + rng.normal(0.0, noise * p99, arr.shape)
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.CopyInformation(b)
    return out, params


def tre_mm(transform: sitk.Transform, points: NDArray[np.float64],
           params: dict[str, object]) -> NDArray[np.float64]:
    """Target registration error (mm) at baseline ``points`` against a synthetic bend.

    ``params`` from :func:`synthetic_followup`; TRE(p) = ``|psi(T(p)) - p|``.
    """
    tp = np.array([transform.TransformPoint([float(v) for v in p]) for p in points])
    back = flexion_map(tp, np.asarray(params["centre"]),
                       params["z_range"],  # type: ignore[arg-type]
                       float(params["max_angle_deg"]),  # type: ignore[arg-type]
                       np.asarray(params["translation_mm"]))
    return np.asarray(np.linalg.norm(back - np.asarray(points), axis=1))
