"""Evaluation harness: pair loaders, lesion-wise scoring, plain subtraction baseline."""

from mri_safety.evaluation.scoring import LesionScore, dice, expert_lesions, froc, score_pair

__all__ = ["LesionScore", "dice", "expert_lesions", "froc", "score_pair"]
