"""Synthetic trial studies (brain + cervical spine) with exact ground truth.

Entry points: :func:`generate_trial` and :func:`synth_main` (the
``mri-safety synth`` command).
"""

from __future__ import annotations

from pathlib import Path


def synth_main(out_dir: Path, patients: int, seed: int, preset: str,
               truth_mm: float = 0.5) -> Path:
    """Generate ``patients`` synthetic patients into ``out_dir`` (preset small|full).

    ``truth_mm``: voxel size (mm) of the brain truth maps. Returns ``out_dir``.
    Deterministic for ``seed``. Raises ValueError for an unknown preset, a
    non-positive patient count or truth voxel size.
    """
    from mri_safety.synth.study import generate_trial

    if patients < 1:
        raise ValueError(f"--patients must be >= 1 (got {patients})")
    if not truth_mm > 0:
        raise ValueError(f"truth voxel size must be > 0 mm (got {truth_mm})")
    return generate_trial(Path(out_dir), patients, seed, preset, truth_mm)


__all__ = ["synth_main"]
