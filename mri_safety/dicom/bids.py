"""BIDS names for converted series.

Layout (BIDS 1.9 entities; labels are alphanumeric so they are always safe as
file names — no header text ever reaches a path)::

    sub-<pseudo>/ses-<visit>/anat/sub-<pseudo>_ses-<visit>_acq-<region><2d|3d>[_ce-gadolinium][_run-<n>]_<suffix>.nii.gz
    sub-<pseudo>/ses-<visit>/dwi/ ... _dwi.nii.gz (+ .bval/.bvec) and _ADC.nii.gz
    sub-<pseudo>/ses-<visit>/func/ ... _task-rest_ ... _bold.nii.gz
    sub-<pseudo>/ses-<visit>/misc/ ... _unclassified.nii.gz   (never dropped)

>>> bids_name("P7QX2", "M2", region="cervical", acq="2d", contrast="T2w",
...           post_contrast=False, run=None)
'sub-P7QX2/ses-M2/anat/sub-P7QX2_ses-M2_acq-cspine2d_T2w'
>>> bids_name("P7QX2", "baseline", region="brain", acq="3d", contrast="T1w",
...           post_contrast=True, run=2)
'sub-P7QX2/ses-baseline/anat/sub-P7QX2_ses-baseline_acq-brain3d_ce-gadolinium_run-2_T1w'
"""

from __future__ import annotations

import re

#: contrast -> (datatype folder, BIDS suffix)
SUFFIX: dict[str, tuple[str, str]] = {
    "T1w": ("anat", "T1w"),
    "T2w": ("anat", "T2w"),
    "FLAIR": ("anat", "FLAIR"),
    "PD": ("anat", "PDw"),
    "T2starw": ("anat", "T2starw"),
    "SWI": ("anat", "swi"),
    "DWI": ("dwi", "dwi"),
    "ADC": ("dwi", "ADC"),
    "bold": ("func", "bold"),
    "localizer": ("misc", "localizer"),
}

#: region -> acq label prefix
REGION_LABEL: dict[str, str] = {
    "brain": "brain",
    "cervical": "cspine",
    "thoracic": "tspine",
    "lumbar": "lspine",
    "spine": "spine",
    "other": "other",
}

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def check_label(label: str, entity: str) -> str:
    """Raise ``ValueError`` unless ``label`` is a valid BIDS label (alphanumeric)."""
    if not _LABEL.match(label):
        raise ValueError(f"invalid BIDS {entity} label {label!r}: must be alphanumeric")
    return label


def bids_name(
    subject: str,
    session: str,
    *,
    region: str,
    acq: str,
    contrast: str,
    post_contrast: bool,
    run: int | None,
) -> str:
    """Relative path (without extension) of a converted series.

    ``region`` is a classification region (``brain``, ``cervical``, ...),
    ``acq`` is ``"2d"`` or ``"3d"``, ``contrast`` a classification contrast
    (unknown ones go to ``misc/`` as ``unclassified``).
    """
    check_label(subject, "subject")
    check_label(session, "session")
    folder, suffix = SUFFIX.get(contrast, ("misc", "unclassified"))
    entities = [f"sub-{subject}", f"ses-{session}"]
    if folder == "func":
        entities.append("task-rest")
    entities.append(f"acq-{REGION_LABEL.get(region, 'other')}{acq.lower()}")
    if post_contrast:
        entities.append("ce-gadolinium")
    if run is not None:
        entities.append(f"run-{run}")
    return f"sub-{subject}/ses-{session}/{folder}/{'_'.join(entities)}_{suffix}"
