"""Small trials of real scanner DICOM, for end-to-end checks of ``mri-safety run``.

The shared data hold no real follow-up DICOM, so these trials are assembled
from what there is, in a scratch folder (the shared files are only linked or
read; nothing is copied into the repository):

* :func:`positions_trial`: the patient-positions studies HFS, HFP and HFDL of
  one volunteer (2D sagittal T1, 1 x 1 x 4.8 mm) as baseline, 24 h and M2 of
  one patient, through visit overrides by StudyInstanceUID, as a tree of
  symbolic links. Nothing is new. With ``focus``, M2 is instead written as
  DICOM with a T1-dark sphere at a deep white-matter point: a known new finding
  in real data.
* :func:`moved_t1_trial`: the real 0.7 mm 3D T1 (``brain-t1-3d``) as baseline
  and the same scan moved rigidly as M2, written as DICOM.

Points are LPS world mm (SimpleITK), as in :mod:`mri_safety.evaluation.pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from mri_safety.evaluation.pairs import DATA

#: patient-positions study -> visit label
POSITIONS = {"HFS": "baseline", "HFP": "24h", "HFDL": "M2"}


@dataclass(frozen=True)
class DicomTrial:
    """A trial folder for ``mri-safety run``: the DICOM tree, the enrolment CSV and,
    when a focus was put in, its centre (LPS mm, in the baseline's world) and
    diameter (mm)."""

    dicom: Path
    enrolment: Path
    focus_lps: tuple[float, float, float] | None = None
    focus_mm: float = 0.0


def _series_files(folder: Path) -> list[str]:
    """The files of the one series in ``folder``, sorted by slice position (GDCM)."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))


def _read(files: list[str]) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    r.SetFileNames(files)
    return sitk.Cast(r.Execute(), sitk.sitkFloat32)


def write_series_like(files: list[str], image: sitk.Image, dest: Path,
                      study_date: str | None = None) -> None:
    """Copies of the DICOM ``files`` (sorted as :func:`_series_files` gives them)
    into ``dest`` with the pixels of ``image`` (read from those files, so its
    slice ``k`` is file ``k``), rounded and clipped to the stored type, and new
    Study, Series, SOP Instance and Frame of Reference UIDs (a new study of the
    same patient); ``study_date`` (YYYYMMDD) replaces the dates when given."""
    dest.mkdir(parents=True, exist_ok=True)
    arr = sitk.GetArrayFromImage(image)  # [k, row, column]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        dtype = ds.pixel_array.dtype
        info = np.iinfo(dtype)
        ds.PixelData = np.clip(np.round(arr[k]), info.min, info.max).astype(dtype).tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if study_date:
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.save_as(dest / Path(f).name)


def _study_uid(folder: Path) -> str:
    first = sorted(p for p in folder.iterdir() if p.is_file())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def positions_trial(root: Path, focus: tuple[float, float] | None = None,
                    seed: int = 20261125) -> DicomTrial:
    """The patient-positions trial in ``root`` (module docstring). ``focus``:
    ``(diameter_mm, gain)`` of a sphere put into M2 (HFDL) at a deep white-matter
    point of the baseline (HFS) in the region both cover, taken through their rigid
    registration (:func:`mri_safety.evaluation.pairs.put_foci`)."""
    src = DATA / "dicom" / "patient-positions"
    dicom = root / "dicom"
    dicom.mkdir(parents=True)
    focus_lps: tuple[float, float, float] | None = None
    linked = {n: lab for n, lab in POSITIONS.items() if focus is None or lab != "M2"}
    for name in linked:
        (dicom / name).symlink_to(src / name, target_is_directory=True)
    overrides = [f"{_study_uid(src / n)}={lab}" for n, lab in linked.items()]
    if focus is not None:
        from mri_safety.change.compare import covered_region, register_pair
        from mri_safety.evaluation.pairs import convert_dir, deep_white_matter_points, put_foci

        name = next(n for n, lab in POSITIONS.items() if lab == "M2")
        files = _series_files(src / name)
        moving = _read(files)
        base_name = next(n for n, lab in POSITIONS.items() if lab == "baseline")
        fixed = convert_dir(src / base_name)  # the baseline as the pipeline converts it
        rp = register_pair(fixed, moving, threads=1, seed=seed, contrast="t1w")
        both = rp.brain & covered_region(rp.followup, rp.baseline, rp.transform)
        pt = deep_white_matter_points(rp.baseline_n4, both, 1)[0]
        write_series_like(files, put_foci(moving, rp.transform, [(pt, focus[0], focus[1])]),
                          dicom / f"{name}_focus")
        overrides.append(f"{_study_uid(dicom / f'{name}_focus')}=M2")
        focus_lps = (float(pt[0]), float(pt[1]), float(pt[2]))
    enrol = root / "enrolment.csv"
    enrol.write_text("patient_id,dosing_date,route,visit_overrides\n"
                     f"crlab,2022-04-07,intrathecal,{';'.join(overrides)}\n")
    return DicomTrial(dicom, enrol, focus_lps, focus[0] if focus else 0.0)


def moved_t1_trial(root: Path) -> DicomTrial:
    """The real 0.7 mm 3D T1 as baseline (links) and, as M2 59 days after dosing,
    the same scan moved rigidly (rotations 2, -1, 1.5 deg about its centre, shift
    1.5, -1, 0.8 mm; linear interpolation), written as DICOM."""
    src = DATA / "dicom" / "brain-t1-3d" / "dicoms"
    files = _series_files(src)
    img = _read(files)
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
    tx = sitk.Euler3DTransform(centre, *np.deg2rad([2.0, -1.0, 1.5]), (1.5, -1.0, 0.8))
    base = root / "dicom" / "baseline"
    base.mkdir(parents=True)
    for f in files:
        (base / Path(f).name).symlink_to(f)
    write_series_like(files, sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0),
                      root / "dicom" / "m2", study_date="20130915")
    pid = pydicom.dcmread(files[0], stop_before_pixels=True).PatientID
    enrol = root / "enrolment.csv"
    enrol.write_text(f"patient_id,dosing_date\n{pid},2013-07-18\n")
    return DicomTrial(root / "dicom", enrol)


#: longitudinal-ms file suffix -> series kind of :mod:`mri_safety.synth.dicom_writer`
MS_KINDS = {"FLAIR": "FLAIR", "T2W": "T2w", "T1W": "T1w"}


def ms_trial(root: Path, patient: str = "patient01",
             noise: dict[str, float] | None = None) -> DicomTrial:
    """A real longitudinal-ms patient as a trial: study1 the baseline (30 days
    before dosing), study2 the M2 visit (day 60), every raw series there is
    (FLAIR, T2W, T1W) written as DICOM by :func:`mri_safety.synth.dicom_writer.write_series`
    from the raw NIfTI (integer values, so the pixels go through unchanged; the
    header is the writer's Siemens-like one, not the scanner's). The expert
    change mask stays in its common space: score with the provided transforms.

    ``noise``: series (``"study1_FLAIR"``) -> Rician noise SD as a fraction of the
    series' median non-zero voxel, added before writing (seeded, rounded to
    integers): a real series made unusable on purpose."""
    import datetime as dt

    import nibabel as nib

    from mri_safety.synth.acquire import rician
    from mri_safety.synth.dicom_writer import PatientInfo, uid_from, write_series

    src = DATA / "longitudinal-ms" / patient
    dosing = dt.date(2024, 1, 1)
    who = PatientInfo(f"MS{patient[-2:]}", seed=int(patient[-2:]))
    for s, (label, day) in {"study1": ("baseline", -30), "study2": ("M2", 60)}.items():
        study = uid_from(patient, s)
        for n, (suffix, kind) in enumerate(MS_KINDS.items(), start=1):
            path = src / f"{s}_{suffix}.nii.gz"
            if not path.exists():  # patient03 has no study1 T1W
                continue
            img: Any = nib.load(path)  # a NIfTI image (dataobj, affine)
            data = np.asarray(img.dataobj)
            if not np.issubdtype(data.dtype, np.integer):
                raise ValueError(f"{path}: expected integer voxels, got {data.dtype}")
            if (frac := (noise or {}).get(f"{s}_{suffix}")) is not None:
                sd = frac * float(np.median(data[data > 0]))
                noisy = rician(data, sd, np.random.default_rng(0))
                data = np.round(np.clip(noisy, 0, np.iinfo(data.dtype).max)).astype(data.dtype)
            write_series(data, img.affine, root / "dicom" / label / suffix, kind=kind,
                         patient=who, study_uid=study, series_uid=uid_from(study, suffix),
                         series_number=n, study_date=dosing + dt.timedelta(days=day),
                         study_time="100000", accession=f"{patient}{s}", body_part="HEAD",
                         description=f"{suffix} {s}",
                         frame_of_reference_uid=uid_from(study, "for"), field_strength=1.5)
    enrol = root / "enrolment.csv"
    enrol.write_text(f"patient_id,dosing_date\n{who.tags()['PatientID']},{dosing}\n")
    return DicomTrial(root / "dicom", enrol)
