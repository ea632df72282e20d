"""Validated YAML configuration (pydantic v2).

Defaults live in the repository's top-level ``configs/`` folder, one file per
section: ``configs/<section>.yaml`` holds the fields of that section directly.
A user may pass one YAML file whose top-level keys are section names
(``sequences:``, ``visits:``, ...); inside a section, each key given replaces
the default value of that key (lists are replaced whole, not merged)::

    visits:
      baseline_max_days_before: 60     # other visit settings keep their defaults

Unknown sections or keys are errors that name the file and the key.

Adding a section is one line in :class:`Config` (``name: Model``) plus its
default file ``configs/<name>.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import mri_safety

CONFIG_DIR = Path(mri_safety.__file__).resolve().parents[1] / "configs"

CONTRASTS = ("T1w", "T2w", "FLAIR", "T2starw", "SWI", "PD", "DWI", "ADC", "bold", "localizer")
REGIONS = ("brain", "cervical", "thoracic", "lumbar", "spine", "other")

Contrast = Literal["T1w", "T2w", "FLAIR", "T2starw", "SWI", "PD", "DWI", "ADC", "bold", "localizer"]
Region = Literal["brain", "cervical", "thoracic", "lumbar", "spine", "other"]
Range = tuple[float | None, float | None]

_BIDS_LABEL = re.compile(r"^[A-Za-z0-9]+$")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names
    the file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- sequences


class Conditions(_Strict):
    """Conditions of one rule; every condition given must hold (logical AND).

    Ranges are ``[min, max]`` inclusive, ``null`` for an open end. Units: ms for
    TR/TE/TI (as in DICOM), degrees for flip angle, mm for extents. ``*_any`` /
    ``*_all`` / ``*_none`` compare case-insensitively with the header's
    multi-valued code strings (``sequence_name_*`` matches substrings of
    SequenceName / PulseSequenceName). A condition on a parameter the header does
    not have is *unknown*: the rule then does not match, but it stays a
    candidate for the description tie-break (see configs/sequences.yaml).
    """

    tr_ms: Range | None = None
    te_ms: Range | None = None
    ti_ms: Range | None = None
    flip_deg: Range | None = None
    echo_train_length: Range | None = None
    n_volumes: Range | None = None
    n_slices: Range | None = None
    series_orientations: Range | None = None
    matrix_max: Range | None = None
    fov_min_mm: Range | None = None
    fov_max_mm: Range | None = None
    coverage_mm: Range | None = None
    lr_mm: Range | None = None
    ap_mm: Range | None = None
    si_mm: Range | None = None
    si_over_ap: Range | None = None
    image_type_any: list[str] | None = None
    image_type_all: list[str] | None = None
    image_type_none: list[str] | None = None
    scanning_sequence_any: list[str] | None = None
    scanning_sequence_all: list[str] | None = None
    scanning_sequence_none: list[str] | None = None
    sequence_variant_any: list[str] | None = None
    sequence_variant_all: list[str] | None = None
    sequence_variant_none: list[str] | None = None
    scan_options_any: list[str] | None = None
    scan_options_all: list[str] | None = None
    scan_options_none: list[str] | None = None
    sequence_name_any: list[str] | None = None
    sequence_name_none: list[str] | None = None
    body_part_any: list[str] | None = None
    body_part_none: list[str] | None = None
    acq: Literal["2d", "3d"] | None = None
    orientation: Literal["axial", "coronal", "sagittal"] | None = None
    diffusion: bool | None = None

    @field_validator("*", mode="after")
    @classmethod
    def _check_range(cls, v: Any) -> Any:
        if isinstance(v, tuple) and len(v) == 2:
            lo, hi = v
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"range [{lo}, {hi}] has min > max")
        return v

    def given(self) -> dict[str, Any]:
        """The conditions actually set, in declaration order."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ContrastRule(_Strict):
    name: str
    contrast: Contrast
    priority: int = 0
    when: Conditions
    note: str = ""


class RegionRule(_Strict):
    name: str
    region: Region
    priority: int = 0
    when: Conditions
    note: str = ""


class Geometry3D(_Strict):
    """When MRAcquisitionType is absent, a series is called 3D from its geometry
    if it has at least ``min_slices`` contiguous slices (spacing <= thickness *
    ``max_gap_ratio``) spaced at most ``max_spacing_mm`` apart."""

    max_spacing_mm: float = Field(1.5, gt=0)
    min_slices: int = Field(40, ge=2)
    max_gap_ratio: float = Field(1.1, gt=0)


class SequenceRules(_Strict):
    """Contents of configs/sequences.yaml (the ``sequences:`` section)."""

    contrast_rules: list[ContrastRule]
    region_rules: list[RegionRule]
    description_patterns: dict[str, list[str]] = Field(default_factory=dict)
    region_description_patterns: dict[str, list[str]] = Field(default_factory=dict)
    post_contrast_tags: list[str] = Field(default_factory=lambda: ["ContrastBolusAgent"])
    post_contrast_negative_values: list[str] = Field(default_factory=lambda: ["", "NONE", "NO"])
    geometry_3d: Geometry3D = Field(default_factory=Geometry3D)  # type: ignore[arg-type]

    @field_validator("description_patterns", "region_description_patterns")
    @classmethod
    def _check_regex(cls, v: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        allowed = CONTRASTS if info.field_name == "description_patterns" else REGIONS
        for key, patterns in v.items():
            if key not in allowed:
                raise ValueError(f"{key!r} is not one of {list(allowed)}")
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"{key}: bad regular expression {p!r}: {e}") from e
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> SequenceRules:
        pairs = (("contrast_rules", self.contrast_rules), ("region_rules", self.region_rules))
        for kind, rules in pairs:
            names = [r.name for r in rules]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{kind}: duplicate rule names {dup}")
        return self


# --------------------------------------------------------------------------- visits


class VisitWindow(_Strict):
    """A post-dose visit: studies ``min_days <= days_from_dosing <= max_days``."""

    label: str
    min_days: int
    max_days: int

    @field_validator("label")
    @classmethod
    def _bids_safe(cls, v: str) -> str:
        if not _BIDS_LABEL.match(v):
            raise ValueError(f"visit label {v!r} must be alphanumeric (BIDS session label)")
        return v

    @model_validator(mode="after")
    def _order(self) -> VisitWindow:
        if self.min_days > self.max_days:
            raise ValueError(f"{self.label}: min_days {self.min_days} > max_days {self.max_days}")
        return self


class VisitWindows(_Strict):
    """Contents of configs/visits.yaml (the ``visits:`` section)."""

    baseline_label: str = "baseline"
    baseline_max_days_before: int = Field(90, ge=0)
    day0_is_post_dose: bool = True
    windows: list[VisitWindow]
    time_point_aliases: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("baseline_label")
    @classmethod
    def _bids_safe(cls, v: str) -> str:
        if not _BIDS_LABEL.match(v):
            raise ValueError(f"baseline_label {v!r} must be alphanumeric (BIDS session label)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> VisitWindows:
        labels = [self.baseline_label] + [w.label for w in self.windows]
        if len(set(labels)) != len(labels):
            raise ValueError(f"windows: duplicate visit labels in {labels}")
        ordered = sorted(self.windows, key=lambda w: w.min_days)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.min_days <= a.max_days:
                raise ValueError(
                    f"windows: {a.label} [{a.min_days}, {a.max_days}] overlaps "
                    f"{b.label} [{b.min_days}, {b.max_days}]"
                )
        seen: dict[str, str] = {}
        for label, aliases in self.time_point_aliases.items():
            if label not in labels:
                raise ValueError(f"time_point_aliases: {label!r} is not a visit label {labels}")
            for alias in aliases:
                key = normalise_time_point(alias)
                if key in seen and seen[key] != label:
                    raise ValueError(
                        f"time_point_aliases: {alias!r} maps to both {seen[key]!r} and {label!r}"
                    )
                seen[key] = label
        return self

    def alias_map(self) -> dict[str, str]:
        """Normalised ClinicalTrialTimePointID -> visit label (labels map to themselves)."""
        out = {normalise_time_point(lbl): lbl for lbl in [self.baseline_label]}
        out.update({normalise_time_point(w.label): w.label for w in self.windows})
        for label, aliases in self.time_point_aliases.items():
            out.update({normalise_time_point(a): label for a in aliases})
        return out


def normalise_time_point(value: str) -> str:
    """Upper-case and drop everything but letters and digits: ``"Month 2"`` -> ``"MONTH2"``."""
    return re.sub(r"[^A-Z0-9]", "", str(value).upper())


# --------------------------------------------------------------------------- whole config


class Config(_Strict):
    """All configuration sections. Add a section here (one line) and put its
    defaults in ``configs/<section>.yaml``."""

    sequences: SequenceRules
    visits: VisitWindows


M = TypeVar("M", bound=BaseModel)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _format_errors(err: ValidationError, where: dict[str, Path], prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if not loc:  # model-level check: its message starts with the key it is about
            m = re.match(r"(?:Value error, )?([A-Za-z_]+):", e["msg"])
            e["msg"] = e["msg"].removeprefix("Value error, ")
            if m and m.group(1) in where:
                loc = [m.group(1)]
                e["msg"] = e["msg"].removeprefix(f"{m.group(1)}:").strip()
        src = where.get(loc[0], where.get("", Path("?"))) if loc else where.get("", Path("?"))
        key = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
        lines.append(f"{src}: {key}: {e['msg']}")
    return "\n".join(lines)


def _validate(model: type[M], data: dict[str, Any], where: dict[str, Path], prefix: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where, prefix)) from None


def _section(
    name: str, model: type[M], override: dict[str, Any] | None, override_file: Path | None,
    default_file: Path | None = None,
) -> M:
    default_file = default_file or CONFIG_DIR / f"{name}.yaml"
    data = _read_yaml(default_file)
    where: dict[str, Path] = {"": default_file, **{k: default_file for k in data}}
    if override:
        if not isinstance(override, dict):
            raise ConfigError(f"{override_file}: {name}: must be a mapping of keys")
        data = {**data, **override}
        where.update({k: override_file or Path("?") for k in override})
    return _validate(model, data, where, name if override else "")


def load_sequence_rules(path: Path | None = None) -> SequenceRules:
    """Classification rules from ``path`` (default ``configs/sequences.yaml``)."""
    return _section("sequences", SequenceRules, None, None, Path(path) if path else None)


def load_visit_windows(path: Path | None = None) -> VisitWindows:
    """Visit windows from ``path`` (default ``configs/visits.yaml``)."""
    return _section("visits", VisitWindows, None, None, Path(path) if path else None)


def load_config(path: Path | None = None, *, defaults_dir: Path | None = None) -> Config:
    """Every section from its default file, overridden by the sections of
    ``path`` (a single user YAML file) when given."""
    user: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    known = list(Config.model_fields)
    for key in user:
        if key not in known:
            raise ConfigError(f"{path}: unknown section {key!r}; known sections: {known}")
    base = defaults_dir or CONFIG_DIR
    sections: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        sections[name] = _section(
            name, model, user.get(name), Path(path) if path else None, base / f"{name}.yaml"
        )
    return Config(**sections)
