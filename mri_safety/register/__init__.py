"""Registration of follow-up to baseline: rigid/affine, halfway space, quality, transforms.

Convention: functions take and return SimpleITK images (LPS+ geometry, world mm);
transforms map fixed (baseline) points to moving (follow-up) points (ITK).
"""
