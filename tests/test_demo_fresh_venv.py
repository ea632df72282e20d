"""The README's first command (``python3 -m pip install -e . && mri-safety
demo``) works from a clean clone in a fresh virtual environment
(scripts/demo_fresh_venv.sh: clone of HEAD, venv without system packages,
dependencies from PyPI, demo outputs checked)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_from_fresh_clone_and_venv(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo_fresh_venv.sh"),
                           str(tmp_path / "fresh")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "demo outputs OK" in proc.stdout
