"""Preprocessing: bias correction, brain/intracranial masks, intensity normalisation.

Convention: functions take and return SimpleITK images (LPS+ geometry, world mm);
see :mod:`mri_safety.register.transforms` for nibabel (RAS+) conversion.
"""
