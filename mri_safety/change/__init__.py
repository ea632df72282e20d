"""Difference maps and candidate new abnormalities (stage after registration).

Public entry points: :func:`mri_safety.change.compare.compare_main` (files in,
``candidates.json`` + NIfTI maps out), :func:`mri_safety.change.compare.detect_pair`
(SimpleITK images in, :class:`~mri_safety.change.compare.ChangeResult` out),
:func:`mri_safety.change.zmap.noise_model`, :func:`mri_safety.change.candidates.extract`.
"""
