"""Convert one :class:`SeriesGroup` (pixels + geometry) to a NIfTI-ready :class:`Volume`.

Three source layouts are handled:

* **classic**: one slice per file (any vendor); repeated slice positions are
  time points (4D), e.g. GE EPI.
* **mosaic**: Siemens mosaic, one volume per file (un-tiled with nibabel's
  MosaicWrapper), files are time points.
* **enhanced**: multi-frame objects (Enhanced MR, legacy converted) with
  per-frame functional groups (PlanePositionSequence, PlaneOrientationSequence,
  PixelMeasuresSequence, PixelValueTransformationSequence, FrameContentSequence).

Coordinates: the returned ``Volume.data`` has axes ``(i, j, k[, t])`` with
``i`` = DICOM column index, ``j`` = DICOM row index, ``k`` = slice positions
ascending along the IOP normal (row cosine x column cosine, LPS), ``t`` = time.
``Volume.affine`` maps voxel ``(i, j, k)`` to world **RAS+ mm** (DICOM LPS+
with x and y negated). Pixel values are the stored integers with the (uniform)
RescaleSlope/RescaleIntercept in ``slope``/``intercept`` (as NIfTI
scl_slope/scl_inter); when the rescale differs between slices the data are
float32 real-world values and slope/intercept are 1/0.

Safety rules (each raises :class:`ConversionError` naming the file and giving
the numbers, unless stated):

* missing ImagePositionPatient / ImageOrientationPatient / PixelSpacing /
  PixelData, undecodable pixel data, orientation or matrix differing inside
  the group, unequal number of slices per time point, mixed layouts;
* missing slices (a step larger than 1.5x the median slice step, or holes in
  InstanceNumber of an unsplit series), non-uniform slice steps (tolerance
  ``max(0.01 mm, 1 % of the median step)``), gantry tilt / sheared stacks
  (first->last slice offset more than 0.1 degrees off the slice normal, or a
  slice origin more than 0.1 mm off the line through the first and last).
  With ``allow_irregular=True`` these three convert anyway, with a
  ``"warning"`` :class:`Problem` stating the numbers: a gap that is a whole
  number of steps is filled with zero slices at the right positions (so the
  geometry stays exact); other irregular steps use the mean step
  (first->last / (n-1)), and a tilted stack keeps its true (sheared) slice
  vector in the sform (the qform, which cannot shear, is the nearest rigid).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from mri_safety.dicom.acqparams import acquisition_params, find_value
from mri_safety.dicom.discover import read_dataset
from mri_safety.dicom.geometry import (
    GeometryError,
    StackLayout,
    affine_ras,
    describe_steps,
    layout_stack,
    same_orientation,
    shear_angle_deg,
)
from mri_safety.dicom.pixels import (
    MosaicVolume,
    PixelDataError,
    csa_image_header,
    rescale_of,
    stored_frames,
    unmosaic,
)
from mri_safety.dicom.records import InstanceRecord, Problem, SeriesGroup

#: A stack whose slice offsets lean more than this off the normal is "tilted".
TILT_TOL_DEG = 0.1
#: ... or whose slice origins leave the first->last line by more than this (mm).
SHEAR_RESIDUAL_TOL_MM = 0.1
#: ImageOrientationPatient cosines must agree to this inside one volume.
IOP_TOL = 1e-4
#: Pixel spacing (mm) must agree to this inside one volume.
SPACING_TOL_MM = 1e-3

_ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
}


class ConversionError(Exception):
    """A series that cannot be converted; ``str()`` names the file and the problem."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = str(path)
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Volume:
    """One converted volume or time series.

    ``data``: ``(i, j, k[, t])`` stored values (see module docstring);
    ``affine``: 4x4 voxel -> world RAS+ mm; ``slope``/``intercept``: real value
    = stored * slope + intercept; ``params``: BIDS sidecar keys in BIDS units
    (no PHI), including ``"DICOMGeometry"`` flags; ``problems``: warnings with
    numbers (errors raise instead).
    """

    data: NDArray[Any]
    affine: NDArray[np.float64]
    params: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    def scaled(self) -> NDArray[np.float32]:
        """Real-world values (stored * slope + intercept) as float32."""
        out = self.data.astype(np.float32)
        if self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out

    def to_nifti(self) -> nib.Nifti1Image:
        """NIfTI-1 image: qform and sform = affine with code 1 (scanner), units
        mm / s, scl_slope/scl_inter = slope/intercept, 4th zoom = TR in s."""
        img = nib.Nifti1Image(self.data, self.affine)
        hdr = img.header
        img.set_sform(self.affine, code=1)
        img.set_qform(self.affine, code=1)  # nearest rigid+zoom if the stack is sheared
        hdr.set_xyzt_units("mm", "sec")
        zooms = list(hdr.get_zooms())
        if self.data.ndim == 4:
            tr = self.params.get("RepetitionTime")
            zooms[3] = float(tr) if isinstance(tr, int | float) and tr > 0 else 1.0
            hdr.set_zooms(zooms)
        if np.issubdtype(self.data.dtype, np.integer):
            hdr.set_slope_inter(self.slope, self.intercept)
        else:
            hdr.set_slope_inter(1.0, 0.0)
        return img


# --------------------------------------------------------------------------- helpers

T = TypeVar("T")
R = TypeVar("R")


def _threads(fn: Callable[[T], R], items: Sequence[T], workers: int | None) -> list[R]:
    """Map ``fn`` over ``items`` in a thread pool (file reads release the GIL)."""
    n = workers if workers is not None else min(4, len(items))
    if n <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, items))


def _read(rec: InstanceRecord) -> Dataset:
    try:
        return read_dataset(rec, pixels=True)
    except Exception as exc:  # pydicom / gzip / OS errors on a bad file
        raise ConversionError(
            rec.path, f"unreadable DICOM file ({type(exc).__name__}: {exc})"
        ) from exc


def _kind(group: SeriesGroup) -> str:
    kinds = set()
    for r in group.instances:
        if r.sop_class_uid in _ENHANCED_SOP_CLASSES or r.n_frames > 1:
            kinds.add("enhanced")
        elif "MOSAIC" in r.image_type:
            kinds.add("mosaic")
        else:
            kinds.add("classic")
    if len(kinds) > 1:
        raise ConversionError(
            group.source_dir,
            f"group mixes {' and '.join(sorted(kinds))} instances; split the series first",
        )
    return kinds.pop()


def _instance_holes(numbers: Sequence[int | None]) -> list[int]:
    nums = sorted({n for n in numbers if n is not None})
    if len(nums) < 2 or None in numbers:
        return []
    return sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))


def _spacing_differs(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is not b
    return bool(np.max(np.abs(np.subtract(a, b))) > SPACING_TOL_MM)


def _fmt_list(values: Sequence[int], limit: int = 10) -> str:
    head = ", ".join(str(v) for v in values[:limit])
    return head + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass
class _Plan:
    """Slot index along k for every sorted position (gaps filled with zeros)."""

    slots: NDArray[np.intp]
    n_slots: int
    slice_vector: NDArray[np.float64]  # LPS mm per k


def _judge_layout(
    layout: StackLayout,
    path: str,
    allow_irregular: bool,
    problems: list[Problem],
    flags: dict[str, Any],
) -> _Plan:
    """Apply the missing-slice / spacing / tilt rules to a measured layout."""
    n = layout.n_positions
    slots = np.arange(n, dtype=np.intp)
    n_slots = n
    slice_vector = layout.slice_vector
    med = layout.spacing_mm
    tol = max(0.01, 0.01 * med)
    flags["SliceSpacingMeasured"] = round(med, 6)
    flags["GantryTiltDeg"] = round(layout.tilt_deg, 4)
    irregular = False
    if layout.gaps:
        desc = "; ".join(
            f"after sorted slice {k}: {g:.3f} mm (~{max(1, round(g / med) - 1)} slice(s))"
            for k, g in layout.gaps[:5]
        )
        msg = (
            f"missing slices: {len(layout.gaps)} gap(s) larger than 1.5x the median slice "
            f"spacing {med:.4f} mm ({desc}); slice steps found: {describe_steps(layout.steps_mm)}"
        )
        if not allow_irregular:
            raise ConversionError(
                path, msg + " (allow_irregular=True converts with zero-filled gaps)"
            )
        mult = np.rint(layout.steps_mm / med).astype(np.intp)
        if np.all(np.abs(layout.steps_mm - mult * med) <= tol) and np.all(mult >= 1):
            slots = np.concatenate([[0], np.cumsum(mult)]).astype(np.intp)
            n_slots = int(slots[-1]) + 1
            slice_vector = (layout.slice_vector * (n - 1)) / (n_slots - 1)
            filled = n_slots - n
            problems.append(
                Problem(path, f"{msg}; converted with {filled} zero slice(s) inserted", "warning")
            )
            flags["MissingSlicesFilled"] = filled
        else:
            problems.append(
                Problem(path, f"{msg}; gaps are not whole slice steps, converted with the "
                        f"mean step {np.linalg.norm(slice_vector):.4f} mm", "warning")
            )
        irregular = True
    if layout.nonuniform:
        worst_k, worst = max(layout.nonuniform, key=lambda kv: abs(kv[1] - med))
        msg = (
            f"non-uniform slice spacing: {len(layout.nonuniform)} step(s) differ from the median "
            f"{med:.4f} mm by more than {tol:.4f} mm (worst: {worst:.4f} mm after sorted slice "
            f"{worst_k}); steps found: {describe_steps(layout.steps_mm)}"
        )
        if not allow_irregular:
            raise ConversionError(path, msg + " (allow_irregular=True converts with the mean step)")
        if "MissingSlicesFilled" not in flags:
            problems.append(
                Problem(path, f"{msg}; converted with the mean step "
                        f"{np.linalg.norm(slice_vector):.4f} mm", "warning")
            )
        irregular = True
    if layout.tilt_deg > TILT_TOL_DEG or layout.inplane_residual_mm > SHEAR_RESIDUAL_TOL_MM:
        extent = float(layout.positions_mm[-1] - layout.positions_mm[0])
        msg = (
            f"gantry tilt / sheared stack: slice positions run {layout.tilt_deg:.3f} degrees off "
            f"the slice normal over {extent:.1f} mm (tolerance {TILT_TOL_DEG} deg), worst slice "
            f"origin {layout.inplane_residual_mm:.3f} mm off the first-last line "
            f"(tolerance {SHEAR_RESIDUAL_TOL_MM} mm)"
        )
        if not allow_irregular:
            raise ConversionError(path, msg + " (allow_irregular=True keeps the sheared affine)")
        problems.append(Problem(path, f"{msg}; sform keeps the sheared slice axis", "warning"))
        irregular = True
    flags["Irregular"] = irregular
    return _Plan(slots=slots, n_slots=n_slots, slice_vector=np.asarray(slice_vector))


def _single_slice_vector(ds: Dataset, normal: NDArray[np.float64], path: str,
                         problems: list[Problem]) -> NDArray[np.float64]:
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        v = find_value(ds, kw)
        try:
            f = float(v) if v is not None else 0.0
        except (TypeError, ValueError):
            f = 0.0
        if f > 0:
            return np.asarray(normal * f, dtype=np.float64)
    problems.append(Problem(path, "single slice without SliceThickness: 1 mm assumed", "warning"))
    return np.asarray(normal, dtype=np.float64)


def _apply_rescale(
    data: NDArray[Any], scales: NDArray[np.float64], path: str, flags: dict[str, Any]
) -> tuple[NDArray[Any], float, float]:
    """``scales`` is (k, t, 2). Uniform -> raw data + (slope, inter); else float32."""
    flat = scales.reshape(-1, 2)
    if np.all(flat == flat[0]):
        flags["RescaleVariesPerSlice"] = False
        return data, float(flat[0, 0]), float(flat[0, 1])
    flags["RescaleVariesPerSlice"] = True
    out = data.astype(np.float32)
    out *= scales[..., 0].astype(np.float32)[np.newaxis, np.newaxis]
    out += scales[..., 1].astype(np.float32)[np.newaxis, np.newaxis]
    return out, 1.0, 0.0


def _photometric(ds: Dataset, path: str, problems: list[Problem]) -> None:
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi == "MONOCHROME1":
        problems.append(Problem(path, "MONOCHROME1 (inverted grey scale): stored values kept "
                                "as they are, not inverted", "warning"))


def _finish(
    data: NDArray[Any],
    affine: NDArray[np.float64],
    params: dict[str, Any],
    problems: list[Problem],
    slope: float,
    inter: float,
) -> Volume:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return Volume(data=data, affine=affine, params=params, problems=problems,
                  slope=slope, intercept=inter)


# --------------------------------------------------------------------------- classic


def _check_records(recs: Sequence[InstanceRecord], path: str) -> None:
    ref = recs[0]
    for r in recs:
        if not r.has_pixel_data:
            raise ConversionError(r.path, "no PixelData in this instance (header only)")
        if r.image_position is None:
            raise ConversionError(r.path, "ImagePositionPatient missing: slice position unknown")
        if r.image_orientation is None:
            raise ConversionError(r.path, "ImageOrientationPatient missing: orientation unknown")
        if r.pixel_spacing is None:
            raise ConversionError(r.path, "PixelSpacing missing: voxel size unknown")
        if r.rows is None or r.columns is None:
            raise ConversionError(r.path, "Rows/Columns missing")
    for r in recs[1:]:
        if not same_orientation(r.image_orientation or (), ref.image_orientation or (), IOP_TOL):
            raise ConversionError(
                path,
                "inconsistent ImageOrientationPatient inside one volume: "
                f"{list(ref.image_orientation or ())} ({ref.path}) vs "
                f"{list(r.image_orientation or ())} ({r.path})",
            )
        if (r.rows, r.columns) != (ref.rows, ref.columns):
            raise ConversionError(
                path,
                f"inconsistent matrix inside one volume: {ref.rows}x{ref.columns} ({ref.path}) "
                f"vs {r.rows}x{r.columns} ({r.path})",
            )
        if _spacing_differs(r.pixel_spacing, ref.pixel_spacing):
            raise ConversionError(
                path,
                f"inconsistent PixelSpacing inside one volume: {ref.pixel_spacing} ({ref.path}) "
                f"vs {r.pixel_spacing} ({r.path})",
            )


def _time_key(rec: InstanceRecord) -> tuple[int, int, int]:
    tp = rec.tags.get("TemporalPositionIdentifier")
    try:
        tpi = int(tp) if tp is not None else 0
    except (TypeError, ValueError):
        tpi = 0
    return (tpi, rec.acquisition_number or 0, rec.instance_number or 0)


def _convert_classic(
    group: SeriesGroup, allow_irregular: bool, workers: int | None
) -> Volume:
    recs = group.instances
    path = group.source_dir
    _check_records(recs, path)
    problems: list[Problem] = []
    flags: dict[str, Any] = {"Source": "classic"}
    iop = np.asarray(recs[0].image_orientation, dtype=np.float64)
    try:
        layout = layout_stack([r.image_position or (np.nan,) * 3 for r in recs], iop,
                              [_time_key(r) for r in recs])
    except GeometryError as exc:
        raise ConversionError(path, str(exc)) from exc
    plan = _judge_layout(layout, path, allow_irregular, problems, flags)
    if group.split_index == 0:
        holes = _instance_holes([r.instance_number for r in recs])
        if holes:
            msg = (
                f"missing slices: InstanceNumber has {len(holes)} hole(s) "
                f"({_fmt_list(holes)}) between {min(r.instance_number or 0 for r in recs)} and "
                f"{max(r.instance_number or 0 for r in recs)}"
            )
            if not allow_irregular:
                raise ConversionError(path, msg)
            problems.append(Problem(path, msg, "warning"))
    n_t = layout.n_times
    rows, cols = int(recs[0].rows or 0), int(recs[0].columns or 0)

    # Read pixels: one pass over the files in (k, t) order, threads for I/O.
    jobs = [(int(layout.order[k, t]), int(plan.slots[k]), t)
            for k in range(layout.n_positions) for t in range(n_t)]
    first_idx = jobs[0][0]

    def job(item: tuple[int, int, int]) -> tuple[NDArray[Any], tuple[float, float], Dataset | None]:
        idx = item[0]
        rec = recs[idx]
        ds = _read(rec)
        try:
            frames = stored_frames(ds)
            scale = rescale_of(ds)
        except PixelDataError as exc:
            raise ConversionError(rec.path, str(exc)) from exc
        if frames.shape[0] != 1:
            raise ConversionError(rec.path, f"{frames.shape[0]} frames in a single-slice series")
        return frames[0], scale, (ds if idx == first_idx else None)

    data: NDArray[Any] | None = None
    scales = np.zeros((plan.n_slots, n_t, 2))
    scales[..., 0] = np.nan
    first_ds: Dataset | None = None
    for (idx, slot, t), (px, scale, ds) in zip(jobs, _threads(job, jobs, workers), strict=True):
        if data is None:
            data = np.zeros((cols, rows, plan.n_slots, n_t), dtype=px.dtype, order="F")
        if px.dtype != data.dtype:
            if np.can_cast(px.dtype, data.dtype, "safe"):
                px = px.astype(data.dtype)
            elif np.can_cast(data.dtype, px.dtype, "safe"):
                data = data.astype(px.dtype, order="F")
            else:
                raise ConversionError(recs[idx].path, f"pixel type {px.dtype} differs from "
                                      f"{data.dtype} of the other slices")
        data[:, :, slot, t] = px.T
        scales[slot, t] = scale
        if ds is not None:
            first_ds = ds
    assert data is not None and first_ds is not None
    # Zero-filled slots take the rescale of the first slice (their value 0 is "no data").
    missing = np.isnan(scales[..., 0])
    scales[missing] = scales[~missing][0]
    data, slope, inter = _apply_rescale(data, scales, path, flags)

    if layout.n_positions == 1:
        slice_vector = _single_slice_vector(first_ds, layout.normal, path, problems)
    else:
        slice_vector = plan.slice_vector
    ps = recs[0].pixel_spacing or (1.0, 1.0)
    affine = affine_ras(iop, layout.first_ipp, ps, slice_vector)
    _photometric(first_ds, path, problems)
    csa = csa_image_header(first_ds)
    params = acquisition_params(first_ds, csa=csa)
    flags.update(NumberOfSlices=int(plan.n_slots), NumberOfVolumes=int(n_t))
    params["DICOMGeometry"] = flags
    return _finish(data, affine, params, problems, slope, inter)


# --------------------------------------------------------------------------- mosaic


def _convert_mosaic(group: SeriesGroup, allow_irregular: bool, workers: int | None) -> Volume:
    path = group.source_dir
    problems: list[Problem] = []
    flags: dict[str, Any] = {"Source": "mosaic"}
    for r in group.instances:
        if not r.has_pixel_data:
            raise ConversionError(r.path, "no PixelData in this instance (header only)")
        if r.image_position is None or r.image_orientation is None or r.pixel_spacing is None:
            raise ConversionError(
                r.path, "ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing"
            )
    recs = sorted(group.instances, key=lambda r: (r.acquisition_number or 0,
                                                  r.instance_number or 0, r.path))
    if group.split_index == 0 and len(recs) > 1:
        for label, nums in (("InstanceNumber", [r.instance_number for r in recs]),
                            ("AcquisitionNumber", [r.acquisition_number for r in recs])):
            holes = _instance_holes(nums)
            if holes and len(set(nums)) == len(nums):
                msg = f"missing volumes: {label} has hole(s) {_fmt_list(holes)}"
                if not allow_irregular:
                    raise ConversionError(path, msg)
                problems.append(Problem(path, msg, "warning"))

    def job(rec: InstanceRecord) -> tuple[MosaicVolume, tuple[float, float], Dataset]:
        ds = _read(rec)
        try:
            return unmosaic(ds), rescale_of(ds), ds
        except (PixelDataError, GeometryError) as exc:
            raise ConversionError(rec.path, str(exc)) from exc

    results = _threads(job, recs, workers)
    first, _, first_ds = results[0]
    for rec, (mv, _, _) in zip(recs[1:], results[1:], strict=True):
        if mv.data.shape != first.data.shape:
            raise ConversionError(
                path, f"mosaic shape {mv.data.shape} ({rec.path}) differs from "
                f"{first.data.shape} ({recs[0].path}): unequal slices per time point",
            )
        if not same_orientation(mv.iop, first.iop, IOP_TOL):
            raise ConversionError(path, f"inconsistent ImageOrientationPatient ({rec.path})")
        moved = float(np.linalg.norm(mv.ipp - first.ipp))
        if moved > 0.05 or not np.allclose(mv.slice_vector, first.slice_vector, atol=1e-3):
            raise ConversionError(
                path, f"volume {rec.path} is displaced {moved:.3f} mm from the first volume: "
                "the time points do not share one geometry",
            )
    ni, nj, nk = first.data.shape
    data = np.empty((ni, nj, nk, len(recs)), dtype=first.data.dtype, order="F")
    scales = np.zeros((nk, len(recs), 2))
    for t, (mv, scale, _) in enumerate(results):
        data[..., t] = mv.data
        scales[:, t] = scale
    data, slope, inter = _apply_rescale(data, scales, path, flags)
    affine = affine_ras(first.iop, first.ipp, first.pixel_spacing, first.slice_vector)
    _photometric(first_ds, path, problems)
    params = acquisition_params(first_ds, csa=first.csa, slice_times_s=first.slice_times_s)
    flags.update(NumberOfSlices=int(nk), NumberOfVolumes=len(recs),
                 MosaicSlicesReversed=bool(first.reversed_slices),
                 SliceSpacingMeasured=round(float(np.linalg.norm(first.slice_vector)), 6),
                 GantryTiltDeg=0.0, Irregular=bool(problems))
    params["DICOMGeometry"] = flags
    return _finish(data, affine, params, problems, slope, inter)


# --------------------------------------------------------------------------- enhanced


@dataclass
class _Frame:
    file: int
    frame: int
    ipp: tuple[float, float, float] | None
    iop: tuple[float, ...] | None
    spacing: tuple[float, float] | None
    scale: tuple[float, float]
    stack: str
    echo_time: float | None
    temporal: int
    acq: int
    in_stack: int


def _fg_item(frame_item: Dataset | None, shared: Dataset | None, seq_kw: str) -> Dataset | None:
    for holder in (frame_item, shared):
        if holder is not None and seq_kw in holder and holder[seq_kw].value:
            return holder[seq_kw].value[0]
    return None


def _floats(v: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _enhanced_frames(ds: Dataset, file_idx: int, path: str) -> list[_Frame]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if n > 1 and per is None:
        # e.g. old-style multi-frame MR Image Storage: one IPP for all frames,
        # so where each frame lies is unknown; guessing would risk a wrong volume.
        raise ConversionError(
            path, f"{n} frames without PerFrameFunctionalGroupsSequence: frame positions unknown"
        )
    if per is not None and len(per) != n:
        raise ConversionError(path, f"{len(per)} per-frame functional groups for {n} frames")
    frames = []
    for f in range(n):
        item = per[f] if per is not None else None
        pos = _fg_item(item, shared, "PlanePositionSequence")
        ori = _fg_item(item, shared, "PlaneOrientationSequence")
        pm = _fg_item(item, shared, "PixelMeasuresSequence")
        pvt = _fg_item(item, shared, "PixelValueTransformationSequence")
        fc = _fg_item(item, shared, "FrameContentSequence")
        echo = _fg_item(item, shared, "MREchoSequence")
        ipp = _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None
        iop = _floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else None
        sp = _floats(pm.get("PixelSpacing"), 2) if pm is not None else None
        if ipp is None:
            ipp = _floats(ds.get("ImagePositionPatient"), 3)
        if iop is None:
            iop = _floats(ds.get("ImageOrientationPatient"), 6)
        if sp is None:
            sp = _floats(ds.get("PixelSpacing"), 2)
        try:
            scale = rescale_of(pvt if pvt is not None else ds)
        except PixelDataError as exc:
            raise ConversionError(path, f"frame {f + 1}: {exc}") from exc
        te = echo.get("EffectiveEchoTime") if echo is not None else None

        def _int(v: Any) -> int:
            try:
                return int(v)
            except (TypeError, ValueError):
                return 0

        frames.append(
            _Frame(
                file=file_idx, frame=f,
                ipp=(ipp[0], ipp[1], ipp[2]) if ipp else None,
                iop=iop,
                spacing=(sp[0], sp[1]) if sp else None,
                scale=scale,
                stack=str(fc.get("StackID", "")) if fc is not None else "",
                echo_time=float(te) if te not in (None, "") else None,
                temporal=_int(fc.get("TemporalPositionIndex")) if fc is not None else 0,
                acq=_int(fc.get("FrameAcquisitionNumber")) if fc is not None else 0,
                in_stack=_int(fc.get("InStackPositionNumber")) if fc is not None else 0,
            )
        )
    return frames


def _partition_key(fr: _Frame) -> tuple[Any, ...]:
    iop = tuple(round(x, 3) + 0.0 for x in fr.iop) if fr.iop else None
    te = round(fr.echo_time, 3) if fr.echo_time is not None else None
    return (fr.stack, te, iop)


def _convert_enhanced(
    group: SeriesGroup, allow_irregular: bool, workers: int | None, split: bool
) -> list[Volume]:
    path = group.source_dir
    recs = group.instances
    for r in recs:
        if not r.has_pixel_data:
            raise ConversionError(r.path, "no PixelData in this instance (header only)")
    datasets = _threads(_read, recs, workers)
    frames: list[_Frame] = []
    for i, (rec, ds) in enumerate(zip(recs, datasets, strict=True)):
        frames.extend(_enhanced_frames(ds, i, rec.path))
    for fr in frames:
        p = recs[fr.file].path
        if fr.ipp is None:
            raise ConversionError(p, f"frame {fr.frame + 1}: ImagePositionPatient missing")
        if fr.iop is None:
            raise ConversionError(p, f"frame {fr.frame + 1}: ImageOrientationPatient missing")
        if fr.spacing is None:
            raise ConversionError(p, f"frame {fr.frame + 1}: PixelSpacing missing")
    parts: dict[tuple[Any, ...], list[_Frame]] = {}
    for fr in frames:
        parts.setdefault(_partition_key(fr), []).append(fr)
    if len(parts) > 1 and not split:
        desc = "; ".join(
            f"StackID={k[0] or '-'} EchoTime={k[1]} ms IOP={list(k[2] or ())}: {len(v)} frames"
            for k, v in parts.items()
        )
        raise ConversionError(
            recs[0].path,
            f"multi-frame object holds {len(parts)} stacks/echoes/orientations ({desc}); "
            "convert them as separate volumes with convert_series_all()",
        )
    pixel_cache: dict[int, NDArray[Any]] = {}

    def pixels_of(file_idx: int) -> NDArray[Any]:
        if file_idx not in pixel_cache:
            try:
                pixel_cache[file_idx] = stored_frames(datasets[file_idx])
            except PixelDataError as exc:
                raise ConversionError(recs[file_idx].path, str(exc)) from exc
        return pixel_cache[file_idx]

    volumes = []
    for key, members in parts.items():
        problems: list[Problem] = []
        flags: dict[str, Any] = {"Source": "enhanced", "NumberOfFiles": len(recs)}
        if len(parts) > 1:
            flags["EnhancedSubVolume"] = {"StackID": key[0], "EchoTime": key[1]}
        ref = members[0]
        for fr in members[1:]:
            if not same_orientation(fr.iop or (), ref.iop or (), IOP_TOL):
                raise ConversionError(
                    recs[fr.file].path,
                    f"inconsistent ImageOrientationPatient between frames {ref.frame + 1} and "
                    f"{fr.frame + 1}: {list(ref.iop or ())} vs {list(fr.iop or ())}",
                )
            if _spacing_differs(fr.spacing, ref.spacing):
                raise ConversionError(
                    recs[fr.file].path,
                    f"inconsistent PixelSpacing between frames: {ref.spacing} vs {fr.spacing}",
                )
        shapes = {(int(datasets[fr.file].Rows), int(datasets[fr.file].Columns)) for fr in members}
        if len(shapes) > 1:
            raise ConversionError(path, f"inconsistent matrix between files: {sorted(shapes)}")
        rows, cols = shapes.pop()
        iop = np.asarray(ref.iop, dtype=np.float64)
        try:
            layout = layout_stack(
                [fr.ipp or (np.nan,) * 3 for fr in members], iop,
                [(fr.temporal, fr.acq, fr.file, fr.in_stack, fr.frame) for fr in members],
            )
        except GeometryError as exc:
            raise ConversionError(recs[ref.file].path, str(exc)) from exc
        plan = _judge_layout(layout, recs[ref.file].path, allow_irregular, problems, flags)
        n_t = layout.n_times
        first_px = pixels_of(members[int(layout.order[0, 0])].file)
        data = np.zeros((cols, rows, plan.n_slots, n_t), dtype=first_px.dtype, order="F")
        scales = np.zeros((plan.n_slots, n_t, 2))
        scales[..., 0] = np.nan
        for k in range(layout.n_positions):
            for t in range(n_t):
                fr = members[int(layout.order[k, t])]
                px = pixels_of(fr.file)[fr.frame]
                data[:, :, plan.slots[k], t] = px.T
                scales[plan.slots[k], t] = fr.scale
        missing = np.isnan(scales[..., 0])
        scales[missing] = scales[~missing][0]
        data, slope, inter = _apply_rescale(data, scales, path, flags)
        first_ds = datasets[members[int(layout.order[0, 0])].file]
        if layout.n_positions == 1:
            slice_vector = _single_slice_vector(first_ds, layout.normal, path, problems)
        else:
            slice_vector = plan.slice_vector
        affine = affine_ras(iop, layout.first_ipp, ref.spacing or (1.0, 1.0), slice_vector)
        _photometric(first_ds, path, problems)
        params = acquisition_params(first_ds, csa=None)
        if ref.echo_time is not None:
            params["EchoTime"] = round(ref.echo_time / 1000.0, 9)
        params["ImageOrientationPatientDICOM"] = [float(x) for x in iop]
        flags.update(NumberOfSlices=int(plan.n_slots), NumberOfVolumes=int(n_t))
        params["DICOMGeometry"] = flags
        volumes.append(_finish(data, affine, params, problems, slope, inter))
    return volumes


# --------------------------------------------------------------------------- public API


def _dispatch(group: SeriesGroup, allow_irregular: bool, workers: int | None,
              split: bool) -> list[Volume]:
    if not group.instances:
        raise ConversionError(group.key or "?", "empty series group")
    kind = _kind(group)
    if kind == "enhanced":
        return _convert_enhanced(group, allow_irregular, workers, split)
    if kind == "mosaic":
        return [_convert_mosaic(group, allow_irregular, workers)]
    return [_convert_classic(group, allow_irregular, workers)]


def convert_series(
    group: SeriesGroup, *, allow_irregular: bool = False, workers: int | None = None
) -> Volume:
    """Convert one series group to a :class:`Volume` (voxels ``(i, j, k[, t])``,
    RAS+ mm affine, BIDS params, warnings).

    Raises :class:`ConversionError` (naming the file) for anything that would
    give a wrong volume; see the module docstring for the rules and what
    ``allow_irregular`` relaxes. ``workers`` = threads reading files (default
    ``min(4, n files)``). A multi-frame file holding several stacks or echoes
    raises; use :func:`convert_series_all` for those.
    """
    return _dispatch(group, allow_irregular, workers, split=False)[0]


def convert_series_all(
    group: SeriesGroup, *, allow_irregular: bool = False, workers: int | None = None
) -> list[Volume]:
    """Like :func:`convert_series` but a multi-frame object holding several
    stacks / echoes / orientations becomes one Volume per (StackID, EchoTime,
    orientation), each flagged ``DICOMGeometry["EnhancedSubVolume"]``."""
    return _dispatch(group, allow_irregular, workers, split=True)


def tilt_of(volume: Volume) -> float:
    """Shear of the volume's slice axis from the in-plane normal, degrees."""
    return shear_angle_deg(volume.affine)


__all__ = [
    "ConversionError",
    "Volume",
    "convert_series",
    "convert_series_all",
    "tilt_of",
    "TILT_TOL_DEG",
    "SHEAR_RESIDUAL_TOL_MM",
]
