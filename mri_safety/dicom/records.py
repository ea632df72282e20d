"""Plain records shared by the DICOM stage: one instance, one series, one problem.

These are the interfaces between discovery, splitting, classification,
conversion and de-identification. They hold header values only (no pixels) so
they are cheap to pickle between processes.

Geometry values are copied from the header unchanged, i.e. in DICOM **LPS+**
patient coordinates (mm); conversion turns them into a RAS+ affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Problem:
    """A warning or error tied to a file or series, safe to show (no PHI).

    ``path`` is the source path as given on the command line tree; ``level`` is
    ``"warning"`` (data still used) or ``"error"`` (data not converted).
    """

    path: str
    message: str
    level: str = "error"

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"


@dataclass(frozen=True)
class InstanceRecord:
    """Header-only summary of one DICOM file (one SOP instance).

    ``path`` is the file on disk; ``member`` is set when the dataset lives
    inside a gzip file (``.dcm.gz``), in which case ``path`` is the .gz file.
    ``tags`` holds the acquisition attributes used by classification and the
    sidecar, keyed by DICOM keyword (e.g. ``"RepetitionTime"``), with values
    converted to plain Python types (str, float, int, list). For enhanced
    multi-frame files the shared/first-frame functional-group values are
    lifted into ``tags`` under the same keywords.
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    study_date: str  # YYYYMMDD as in the header ("" when absent)
    study_time: str
    series_number: int | None
    instance_number: int | None
    acquisition_number: int | None
    echo_number: int | None
    n_frames: int
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) mm
    image_orientation: tuple[float, ...] | None  # 6 direction cosines, LPS
    image_position: tuple[float, float, float] | None  # LPS mm, first voxel centre
    image_type: tuple[str, ...]
    transfer_syntax_uid: str
    has_pixel_data: bool
    tags: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def file(self) -> Path:
        return Path(self.path)


@dataclass
class SeriesGroup:
    """Instances that form one volume (3D) or one time series (4D).

    Produced by :func:`mri_safety.dicom.series.split_series`; a source series
    that mixes geometries, echoes or image types becomes several groups whose
    ``split_index`` is 1, 2, ... (0 when the source series was not split).
    ``key`` is a stable, PHI-free identifier (a hash) for reports.
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    study_date: str
    instances: list[InstanceRecord]
    split_index: int = 0
    split_reason: str = ""
    problems: list[Problem] = field(default_factory=list)

    @property
    def first(self) -> InstanceRecord:
        return self.instances[0]

    @property
    def tags(self) -> dict[str, Any]:
        return self.instances[0].tags

    @property
    def source_dir(self) -> str:
        return str(Path(self.instances[0].path).parent)
