"""Stage functions with the :meth:`pipelines.cache.StageStore.run` calling
convention ``fn(inputs: dict[str, Path], out_dir: Path, **params) -> summary``.

Each wraps library functions; the store handles caching, atomic placement and
the manifest. Parameters must be JSON-serialisable (they are part of the key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.convert import convert_tree


def convert_stage(inputs: dict[str, Path], out: Path) -> dict[str, Any]:
    """DICOM tree ``inputs["dicom"]`` -> BIDS tree in ``out``.

    The site secret is an *input file* (``inputs["secret"]``), never a
    parameter: the cache key and manifest then carry only its SHA-256, not the
    secret. ``inputs["enrolment"]`` (CSV) is optional.
    """
    enrolment = inputs.get("enrolment")
    report = convert_tree(
        inputs["dicom"], out, secret=inputs["secret"].read_bytes(), enrolment=enrolment,
    )
    return {
        "converted": len(report.converted),
        "failed": len(report.failed),
        "exit_code": report.exit_code,
    }
