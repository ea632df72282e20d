"""Evidence pictures for reviewers: per-candidate montages and per-pair
registration checks (matplotlib Agg, Pillow for the GIF flicker)."""

from mri_safety.evidence.display import CONVENTION, LETTERS, Slice2D, slice_through, to_ras
from mri_safety.evidence.montage import MontageCandidate, MontageResult, Panel, render_montage
from mri_safety.evidence.regcheck import RegCheckResult, render_regcheck

__all__ = [
    "CONVENTION",
    "LETTERS",
    "MontageCandidate",
    "MontageResult",
    "Panel",
    "RegCheckResult",
    "Slice2D",
    "render_montage",
    "render_regcheck",
    "slice_through",
    "to_ras",
]
