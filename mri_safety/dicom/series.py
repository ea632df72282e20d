"""Split indexed instances into convertible series (volumes or time series).

A DICOM *series* (one SeriesInstanceUID) is not always one volume: scanners put
several echoes, magnitude and phase images, or localiser planes of three
orientations in one series. Like dcm2niix, :func:`split_series` splits a
series wherever the orientation, echo, image type, matrix, pixel spacing or SOP
class differs, so that each :class:`SeriesGroup` has one geometry. Repeated
slice positions inside a group (fMRI, DWI) become the 4th dimension at
conversion.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mri_safety.dicom.discover import discover
from mri_safety.dicom.records import InstanceRecord, Problem, SeriesGroup

#: Names of the fields of the split key, in order, for messages.
_KEY_FIELDS = ("SOP class", "orientation", "echo number", "echo time", "image type",
               "matrix", "pixel spacing")


def _round(values: tuple[float, ...] | None, ndigits: int) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(v, ndigits) + 0.0 for v in values)


def _split_key(rec: InstanceRecord, default_iop: tuple[float, ...] | None) -> tuple[Any, ...]:
    """Fields that must agree inside one volume. Orientation is compared to
    3 decimals of the direction cosines (~0.06 degrees); an instance without
    orientation is kept with its series' usual orientation so conversion can
    name it as the faulty file instead of silently splitting it off."""
    iop = _round(rec.image_orientation, 3) or default_iop
    te = rec.tags.get("EchoTime")
    te_key = round(float(te), 2) if isinstance(te, int | float) else None
    return (
        rec.sop_class_uid,
        iop,
        rec.echo_number,
        te_key,
        rec.image_type[:3],
        (rec.rows, rec.columns),
        _round(rec.pixel_spacing, 4),
    )


def _describe_split(keys: list[tuple[Any, ...]]) -> str:
    differing = [
        name for i, name in enumerate(_KEY_FIELDS) if len({k[i] for k in keys}) > 1
    ]
    return "split where " + ", ".join(differing) + " differ"


def group_key(series_uid: str, key: tuple[Any, ...]) -> str:
    """Stable, PHI-free 12-hex-digit identifier of a group."""
    return hashlib.sha256(repr((series_uid, key)).encode()).hexdigest()[:12]


def _sort_instances(instances: list[InstanceRecord]) -> list[InstanceRecord]:
    return sorted(
        instances,
        key=lambda r: (r.instance_number if r.instance_number is not None else 1 << 30, r.path),
    )


def split_series(
    instances: Iterable[InstanceRecord],
) -> tuple[list[SeriesGroup], list[Problem]]:
    """Group instances by SeriesInstanceUID, then split each series into
    groups of one geometry, echo and image type.

    Returns the groups (ordered by patient, study date, series number, split
    index) and problems for instances that cannot belong to any series.
    """
    problems: list[Problem] = []
    by_series: dict[str, list[InstanceRecord]] = defaultdict(list)
    for rec in instances:
        if not rec.series_instance_uid:
            problems.append(Problem(rec.path, "no SeriesInstanceUID: not converted"))
            continue
        by_series[rec.series_instance_uid].append(rec)

    groups: list[SeriesGroup] = []
    for uid, recs in by_series.items():
        iops = Counter(_round(r.image_orientation, 3) for r in recs if r.image_orientation)
        default_iop = iops.most_common(1)[0][0] if iops else None
        parts: dict[tuple[Any, ...], list[InstanceRecord]] = defaultdict(list)
        for rec in recs:
            parts[_split_key(rec, default_iop)].append(rec)
        keys = sorted(
            parts,
            key=lambda k: (k[2] if k[2] is not None else -1, min(
                r.instance_number if r.instance_number is not None else 1 << 30
                for r in parts[k]
            ), repr(k)),
        )
        reason = _describe_split(keys) if len(keys) > 1 else ""
        for idx, key in enumerate(keys, start=1 if len(keys) > 1 else 0):
            members = _sort_instances(parts[key])
            first = members[0]
            groups.append(
                SeriesGroup(
                    key=group_key(uid, key),
                    series_instance_uid=uid,
                    study_instance_uid=first.study_instance_uid,
                    patient_id=first.patient_id,
                    study_date=first.study_date,
                    instances=members,
                    split_index=idx,
                    split_reason=reason,
                )
            )
    groups.sort(
        key=lambda g: (
            g.patient_id, g.study_date, g.study_instance_uid,
            g.first.series_number if g.first.series_number is not None else 1 << 30,
            g.series_instance_uid, g.split_index,
        )
    )
    return groups, problems


def load_series_dir(path: str | Path, workers: int | None = None) -> list[SeriesGroup]:
    """Discover and split everything under ``path`` (convenience for tests and
    scripts; problems are attached to the first group's ``problems`` list is
    *not* done — use :func:`discover` + :func:`split_series` to see them)."""
    result = discover(path, workers=workers)
    groups, _ = split_series(result.instances)
    return groups
