"""Validated settings for quality control (``configs/qc.yaml``, pydantic v2).

Kept inside :mod:`mri_safety.qc` so that it can later become the ``qc``
section of :class:`mri_safety.config.Config` unchanged (``qc: QCConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

import mri_safety

CONFIG_DIR = Path(mri_safety.__file__).resolve().parents[1] / "configs"


class QCConfigError(ValueError):
    """``configs/qc.yaml`` (or a user file) is missing or invalid; the message
    names the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    """Deviation above ``minor`` is minor, above ``major`` is major."""

    minor: float = Field(ge=0)
    major: float = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> Tolerance:
        if self.major < self.minor:
            raise ValueError(f"major ({self.major}) must be >= minor ({self.minor})")
        return self


class Penalty(_Strict):
    info: float = Field(default=0.02, ge=0, le=1)
    minor: float = Field(default=0.10, ge=0, le=1)
    major: float = Field(default=0.30, ge=0, le=1)


class ProtocolTolerances(_Strict):
    """Relative tolerances (TR, TE, TI, slice thickness, voxel size: fraction of
    the larger value) and absolute ones (flip angle deg, gap mm, field T)."""

    repetition_time: Tolerance = Tolerance(minor=0.02, major=0.20)
    echo_time: Tolerance = Tolerance(minor=0.05, major=0.25)
    inversion_time: Tolerance = Tolerance(minor=0.05, major=0.20)
    slice_thickness: Tolerance = Tolerance(minor=0.05, major=0.25)
    voxel_size: Tolerance = Tolerance(minor=0.05, major=0.25)
    flip_angle_deg: Tolerance = Tolerance(minor=2.0, major=10.0)
    slice_gap_mm: Tolerance = Tolerance(minor=0.2, major=1.0)
    field_strength_t: Tolerance = Tolerance(minor=0.05, major=0.05)
    penalty: Penalty = Penalty()
    missing_penalty: float = Field(default=0.02, ge=0, le=1)


class MetricParams(_Strict):
    """How masks are derived for the image quality metrics (mm = world mm)."""

    air_margin_mm: float = Field(default=10.0, ge=0)
    zero_fill_margin_mm: float = Field(default=5.0, ge=0)
    air_min_voxels: int = Field(default=2000, ge=1)
    air_min_fraction: float = Field(default=0.05, ge=0, le=1)
    fill_face_fraction: float = Field(default=0.15, gt=0, le=1)
    fill_min_faces: int = Field(default=4, ge=1, le=6)
    kmeans_seed: int = 0
    kmeans_classes: int = Field(default=3, ge=2)
    erode_tissue_mm: float = Field(default=1.0, ge=0)


class Threshold(_Strict):
    review: float
    unusable: float
    higher_is_better: bool

    @model_validator(mode="after")
    def _order(self) -> Threshold:
        ok = self.unusable <= self.review if self.higher_is_better else self.unusable >= self.review
        if not ok:
            raise ValueError(
                f"unusable ({self.unusable}) must be on the worse side of review ({self.review})"
            )
        return self


_METRIC_NAMES = (
    "snr", "snr_local", "snr_dietrich", "cnr", "cjv", "efc", "fber", "gsr", "fov_coverage",
)


def _check_names(v: dict[str, Threshold]) -> dict[str, Threshold]:
    bad = sorted(set(v) - set(_METRIC_NAMES))
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; known: {list(_METRIC_NAMES)}")
    return v


class VerdictThresholds(_Strict):
    """``absolute``: thresholds on a series' own metric values;
    ``relative_to_baseline``: thresholds on follow-up / baseline ratios."""

    absolute: dict[str, Threshold] = {
        "snr_local": Threshold(review=8.0, unusable=4.0, higher_is_better=True),
        "snr_dietrich": Threshold(review=15.0, unusable=5.0, higher_is_better=True),
        "cnr": Threshold(review=0.75, unusable=0.55, higher_is_better=True),
        "cjv": Threshold(review=1.8, unusable=2.5, higher_is_better=False),
        "fov_coverage": Threshold(review=0.95, unusable=0.80, higher_is_better=True),
    }
    relative_to_baseline: dict[str, Threshold] = {
        "cnr": Threshold(review=0.8, unusable=0.5, higher_is_better=True),
        "cjv": Threshold(review=1.3, unusable=2.0, higher_is_better=False),
    }

    @field_validator("absolute", "relative_to_baseline")
    @classmethod
    def _names(cls, v: dict[str, Threshold]) -> dict[str, Threshold]:
        return _check_names(v)


class QCConfig(_Strict):
    protocol: ProtocolTolerances = ProtocolTolerances()
    metrics: MetricParams = MetricParams()
    verdict: VerdictThresholds = VerdictThresholds()


def load_qc_config(path: Path | str | None = None) -> QCConfig:
    """Read and validate a QC YAML file (default ``configs/qc.yaml``).

    Raises :class:`QCConfigError` naming the file and the bad key.
    """
    p = Path(path) if path is not None else CONFIG_DIR / "qc.yaml"
    try:
        raw: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise QCConfigError(f"{p}: cannot read QC config: {e}") from e
    except yaml.YAMLError as e:
        raise QCConfigError(f"{p}: not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise QCConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return QCConfig.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise QCConfigError(f"{p}: {msgs}") from e
