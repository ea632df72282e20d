"""Shared test fixtures.

Real data lives beside the checkout in ``../shared/data`` (override with the
``MRI_SAFETY_DATA`` environment variable). Tests read it in place and never
copy it into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRI_SAFETY_DATA", REPO.parent / "shared" / "data")).resolve()


def need_data(*parts: str) -> Path:
    """Return ``DATA/parts...`` or skip the calling test when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (set MRI_SAFETY_DATA)")
    return p


def head_t1_2mm_n4() -> sitk.Image:
    """The real 3D head T1 (``brain-t1-3d`` reference NIfTI) resampled to 2 mm
    isotropic (linear, same origin and direction) and bias-corrected: the input of
    the template-fit tests (the brain-mask step works on such images)."""
    from mri_safety.preprocess.bias import n4_correct
    from mri_safety.register.transforms import load_image

    head = load_image(need_data("dicom", "brain-t1-3d", "ref", "anat-T1w.nii.gz"))
    size = [int(n * s / 2.0) for n, s in zip(head.GetSize(), head.GetSpacing(), strict=True)]
    return n4_correct(sitk.Resample(head, size, sitk.Transform(), sitk.sitkLinear,
                                    head.GetOrigin(), [2.0] * 3, head.GetDirection(), 0.0,
                                    sitk.sitkFloat32))[0]


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
