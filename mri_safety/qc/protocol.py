"""Protocol conformance of a follow-up series against its baseline counterpart.

Inputs are BIDS sidecar dicts (``Volume.params`` or the written JSON: TR, TE,
TI in seconds, flip angle in degrees, thicknesses in mm, field in tesla) and
optionally the NIfTI affines (voxel -> world RAS+ mm), from which voxel size,
slice spacing and slice orientation are read. Every deviation carries both
values and a severity; the comparison's confidence in [0, 1] is the product of
``1 - penalty(severity)`` over the deviations (tolerances and penalties:
``configs/qc.yaml`` ``protocol``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mri_safety.qc.config import ProtocolTolerances, Tolerance

Severity = Literal["info", "minor", "major"]
_RANK: dict[str, int] = {"info": 0, "minor": 1, "major": 2}


@dataclass(frozen=True)
class Deviation:
    """One field that differs: ``baseline`` / ``followup`` values in the units
    named by ``unit`` (``""`` for text)."""

    field: str
    baseline: Any
    followup: Any
    severity: Severity
    unit: str = ""
    note: str = ""


@dataclass(frozen=True)
class ProtocolComparison:
    """All deviations and the resulting comparison confidence in [0, 1]."""

    deviations: list[Deviation] = field(default_factory=list)
    confidence: float = 1.0

    @property
    def worst(self) -> Severity | None:
        """Most severe deviation, ``None`` when the protocols match."""
        if not self.deviations:
            return None
        return max(self.deviations, key=lambda d: _RANK[d.severity]).severity

    def by_field(self) -> dict[str, Deviation]:
        return {d.field: d for d in self.deviations}


# --------------------------------------------------------------------------- geometry


def voxel_sizes(affine: NDArray[np.floating]) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along voxel axes i, j, k of a voxel -> world affine."""
    z = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return (float(z[0]), float(z[1]), float(z[2]))


def slice_orientation(affine: NDArray[np.floating]) -> tuple[str, float]:
    """Slice plane of the third voxel axis (k = slice direction of a 2D stack).

    Returns ``(plane, obliquity_deg)``: plane ``"sagittal"`` when the slice
    normal is closest to world x (R-L), ``"coronal"`` for y (A-P), ``"axial"``
    for z (S-I); obliquity = angle between the normal and that world axis.
    """
    n = np.asarray(affine, dtype=float)[:3, 2]
    n = n / np.linalg.norm(n)
    ax = int(np.argmax(np.abs(n)))
    ang = float(np.degrees(np.arccos(min(1.0, abs(float(n[ax]))))))
    return ("sagittal", "coronal", "axial")[ax], ang


def distortion_correction(image_type: Sequence[str] | str | None) -> str | None:
    """Gradient-nonlinearity correction flag from DICOM ImageType values:
    ``"DIS3D"``, ``"DIS2D"``, ``"ND"`` (none) or ``None`` when not stated."""
    if image_type is None:
        return None
    vals = [image_type] if isinstance(image_type, str) else list(image_type)
    tokens = {str(v).strip().upper() for v in vals for v in str(v).split("\\")}
    for flag in ("DIS3D", "DIS2D", "ND"):
        if flag in tokens:
            return flag
    return None


def _slice_gap(params: Mapping[str, Any], affine: NDArray[np.floating] | None) -> float | None:
    """Gap (mm) = slice spacing - slice thickness; spacing from
    SpacingBetweenSlices, else from the affine's k edge. Negative = overlap."""
    thick = _num(params.get("SliceThickness"))
    spacing = _num(params.get("SpacingBetweenSlices"))
    if spacing is None and affine is not None:
        spacing = voxel_sizes(affine)[2]
    if thick is None or spacing is None:
        return None
    return round(spacing - thick, 4)


# --------------------------------------------------------------------------- comparison


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float) and np.isfinite(v):
        return float(v)
    if isinstance(v, list | tuple) and v and all(isinstance(x, int | float) for x in v):
        return float(v[0])  # e.g. multi-echo lists: the first echo
    return None


def _grade(diff: float, tol: Tolerance) -> Severity | None:
    """Severity of a non-negative difference (relative or absolute, same unit
    as ``tol``); ``None`` when it is zero within rounding."""
    if diff > tol.major:
        return "major"
    if diff > tol.minor:
        return "minor"
    if diff > 1e-6:
        return "info"
    return None


def _rel(a: float, b: float) -> float:
    m = max(abs(a), abs(b))
    return 0.0 if m == 0 else abs(a - b) / m


def compare_protocol(
    baseline: Mapping[str, Any],
    followup: Mapping[str, Any],
    *,
    baseline_affine: NDArray[np.floating] | None = None,
    followup_affine: NDArray[np.floating] | None = None,
    tolerances: ProtocolTolerances | None = None,
) -> ProtocolComparison:
    """Compare a follow-up series' acquisition with its baseline counterpart.

    ``baseline``/``followup``: BIDS sidecar dicts (times in s, angles in deg,
    lengths in mm, field in T). Affines (voxel -> world RAS+ mm) give voxel
    size, slice gap when SpacingBetweenSlices is absent, and slice orientation;
    without them those fields are not compared.

    Severities: field strength, manufacturer, 2D/3D, orientation, contrast
    agent and "no distortion correction vs corrected" differences are major;
    model and DIS2D vs DIS3D are minor; software version is info; numeric
    fields are graded by the tolerances. A field stated on one side only is an
    info deviation with the ``missing_penalty``.
    """
    tol = tolerances or ProtocolTolerances()
    devs: list[Deviation] = []

    def text(name: str, key: str, severity: Severity) -> None:
        a, b = baseline.get(key), followup.get(key)
        if a is None and b is None:
            return
        if a is None or b is None:
            devs.append(Deviation(name, a, b, "info", note="stated on one side only"))
            return
        if str(a).strip().lower() != str(b).strip().lower():
            devs.append(Deviation(name, a, b, severity))

    def numeric(name: str, a: float | None, b: float | None, t: Tolerance, relative: bool,
                unit: str, scale: float = 1.0) -> None:
        if a is None and b is None:
            return
        if a is None or b is None:
            devs.append(Deviation(name, a, b, "info", unit, "stated on one side only"))
            return
        sev = _grade(_rel(a, b) if relative else abs(a - b), t)
        if sev is not None:
            devs.append(Deviation(name, round(a * scale, 6), round(b * scale, 6), sev, unit))

    def p(d: Mapping[str, Any], k: str) -> float | None:
        return _num(d.get(k))

    numeric("MagneticFieldStrength", p(baseline, "MagneticFieldStrength"),
            p(followup, "MagneticFieldStrength"), tol.field_strength_t, False, "T")
    text("Manufacturer", "Manufacturer", "major")
    text("ManufacturersModelName", "ManufacturersModelName", "minor")
    text("SoftwareVersions", "SoftwareVersions", "info")
    numeric("RepetitionTime", p(baseline, "RepetitionTime"), p(followup, "RepetitionTime"),
            tol.repetition_time, True, "ms", 1000.0)
    numeric("EchoTime", p(baseline, "EchoTime"), p(followup, "EchoTime"),
            tol.echo_time, True, "ms", 1000.0)
    numeric("InversionTime", p(baseline, "InversionTime"), p(followup, "InversionTime"),
            tol.inversion_time, True, "ms", 1000.0)
    numeric("FlipAngle", p(baseline, "FlipAngle"), p(followup, "FlipAngle"),
            tol.flip_angle_deg, False, "deg")
    numeric("SliceThickness", p(baseline, "SliceThickness"), p(followup, "SliceThickness"),
            tol.slice_thickness, True, "mm")
    numeric("SliceGap", _slice_gap(baseline, baseline_affine),
            _slice_gap(followup, followup_affine), tol.slice_gap_mm, False, "mm")
    text("MRAcquisitionType", "MRAcquisitionType", "major")

    if baseline_affine is not None and followup_affine is not None:
        va = sorted(voxel_sizes(baseline_affine))
        vb = sorted(voxel_sizes(followup_affine))
        worst: Severity | None = None
        for x, y in zip(va, vb, strict=True):
            s = _grade(_rel(x, y), tol.voxel_size)
            if s is not None and (worst is None or _RANK[s] > _RANK[worst]):
                worst = s
        if worst is not None:
            devs.append(Deviation("VoxelSize", tuple(round(x, 3) for x in va),
                                  tuple(round(y, 3) for y in vb), worst, "mm",
                                  "sorted voxel edges"))
        oa, anga = slice_orientation(baseline_affine)
        ob, angb = slice_orientation(followup_affine)
        if oa != ob:
            devs.append(Deviation("Orientation", oa, ob, "major"))
        elif abs(anga - angb) > 10.0:
            devs.append(Deviation("Orientation", f"{oa} {anga:.0f} deg oblique",
                                  f"{ob} {angb:.0f} deg oblique", "info"))

    da = distortion_correction(baseline.get("ImageType"))
    db = distortion_correction(followup.get("ImageType"))
    if da != db:
        if da is None or db is None:
            devs.append(Deviation("DistortionCorrection", da, db, "info",
                                  note="stated on one side only"))
        else:
            sev: Severity = "major" if "ND" in (da, db) else "minor"
            devs.append(Deviation("DistortionCorrection", da, db, sev))

    ca, cb = baseline.get("ContrastBolusAgentPresent"), followup.get("ContrastBolusAgentPresent")
    if ca is not None and cb is not None and bool(ca) != bool(cb):
        devs.append(Deviation("ContrastAgent", bool(ca), bool(cb), "major"))
    elif (ca is None) != (cb is None):
        devs.append(Deviation("ContrastAgent", ca, cb, "info", note="stated on one side only"))

    conf = 1.0
    for d in devs:
        if d.note == "stated on one side only":
            conf *= 1.0 - tol.missing_penalty
        else:
            conf *= 1.0 - getattr(tol.penalty, d.severity)
    return ProtocolComparison(devs, float(np.clip(conf, 0.0, 1.0)))
