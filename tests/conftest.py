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
