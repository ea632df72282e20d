"""Synthetic trial studies (brain + cervical spine) with exact ground truth.

Entry points: :func:`generate_trial` and :func:`synth_main` (the
``mri-safety synth`` command).
"""

from __future__ import annotations

from pathlib import Path


def synth_main(out_dir: Path, patients: int, seed: int, preset: str) -> Path:
    """Generate ``patients`` synthetic patients into ``out_dir`` (preset small|full).

    Returns ``out_dir``. Deterministic for ``seed``. Raises ValueError for an
    unknown preset or a non-positive patient count.
    """
    from mri_safety.synth.study import generate_trial

    if patients < 1:
        raise ValueError(f"--patients must be >= 1 (got {patients})")
    return generate_trial(Path(out_dir), patients, seed, preset)


__all__ = ["synth_main"]
