"""Shared test fixtures.

Real data lives beside the checkout in ``../shared/data`` (override with the
``MRI_SAFETY_DATA`` environment variable). Tests read it in place and never
copy it into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRI_SAFETY_DATA", REPO.parent / "shared" / "data")).resolve()


def need_data(*parts: str) -> Path:
    """Return ``DATA/parts...`` or skip the calling test when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (set MRI_SAFETY_DATA)")
    return p


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return need_data()


def small_synthetic_trial(tmp_path_factory: pytest.TempPathFactory,
                          keep: tuple[str, ...]) -> Path:
    """One synthetic patient (baseline, 24h, M2, seed 0) with only the series
    folders named in ``keep``; returns the trial folder (dicom/ + enrolment.csv)."""
    import shutil

    from mri_safety.synth import synth_main

    full = tmp_path_factory.mktemp("synth")
    synth_main(full, 1, 0, "small")
    small = tmp_path_factory.mktemp("trial")
    for series in (full / "dicom").glob("*/*/*"):
        if series.name in keep:
            shutil.copytree(series, small / "dicom" / series.relative_to(full / "dicom"))
    shutil.copy(full / "enrolment.csv", small / "enrolment.csv")
    return small
