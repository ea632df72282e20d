"""De-identification (PS3.15 Annex E basic profile + modified dates option).

Public API::

    load_secret(path) -> bytes
    Deidentifier(secret).pseudonym(patient_id) / .uid(uid) / .hash_uid(uid)
    Deidentifier(secret).deidentify(ds, pseudonym=..., dosing_date=..., first_study_date=...)
    exclusion_reason(ds_or_record) -> str | None
    scrub_text(text, known=...) -> str
    write_deidentified_series(datasets, out_dir, deidentifier, pseudonym=..., dosing_date=...)

See ``docs/deidentification.md``.
"""

from mri_safety.dicom.deid.core import (
    CODE_BASIC_PROFILE,
    CODE_MODIFIED_DATES,
    Deidentifier,
    write_deidentified_series,
)
from mri_safety.dicom.deid.dates import ANCHOR_DATE, DateShift, parse_da
from mri_safety.dicom.deid.exclusion import MR_IMAGE_CLASSES, exclusion_reason
from mri_safety.dicom.deid.keys import (
    SECRET_ENV,
    create_secret,
    default_secret_path,
    load_secret,
)
from mri_safety.dicom.deid.profile import ProfileTable, load_table
from mri_safety.dicom.deid.text import scrub_text

__all__ = [
    "ANCHOR_DATE",
    "CODE_BASIC_PROFILE",
    "CODE_MODIFIED_DATES",
    "MR_IMAGE_CLASSES",
    "SECRET_ENV",
    "DateShift",
    "Deidentifier",
    "ProfileTable",
    "create_secret",
    "default_secret_path",
    "exclusion_reason",
    "load_secret",
    "load_table",
    "parse_da",
    "scrub_text",
    "write_deidentified_series",
]
