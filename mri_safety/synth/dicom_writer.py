"""Write synthetic volumes as classic MR Image Storage DICOM series (pydicom).

Headers are Siemens-like. Every PHI tag carries a fake value containing the
marker :data:`PHI_MARKER` so de-identification can be checked. UIDs are derived
deterministically from the study seed (``uid_from``). Geometry: the volume's
voxel -> world RAS+ affine is written as LPS+ ImageOrientationPatient /
ImagePositionPatient, one file per slice k; pixel (row r, column c) of slice k
is voxel (i=c, j=r, k).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, MRImageStorage

PHI_MARKER = "SYNTHPHI"
_FLIP = np.diag([-1.0, -1.0, 1.0])

#: Acquisition parameters per synthetic series kind (Siemens-like, 3 T).
SEQUENCE_PARAMS: dict[str, dict[str, Any]] = {
    "T1w": dict(RepetitionTime=2300.0, EchoTime=2.98, InversionTime=900.0, FlipAngle=9.0,
                ScanningSequence=["GR", "IR"], SequenceVariant=["SP", "MP"],
                SequenceName="*tfl3d1_16ns", ScanOptions="IR", EchoTrainLength=1,
                ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "T1w_post": dict(RepetitionTime=2300.0, EchoTime=2.98, InversionTime=900.0, FlipAngle=9.0,
                     ScanningSequence=["GR", "IR"], SequenceVariant=["SP", "MP"],
                     SequenceName="*tfl3d1_16ns", ScanOptions="IR", EchoTrainLength=1,
                     ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "T2w": dict(RepetitionTime=5000.0, EchoTime=95.0, FlipAngle=150.0,
                ScanningSequence=["SE"], SequenceVariant=["SK", "SP", "OSP"],
                SequenceName="*tse2d1_15", ScanOptions="PFP", EchoTrainLength=15,
                ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "FLAIR": dict(RepetitionTime=9000.0, EchoTime=85.0, InversionTime=2500.0, FlipAngle=150.0,
                  ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SP", "MP", "OSP"],
                  SequenceName="*tir2d1_16", ScanOptions="IR", EchoTrainLength=16,
                  ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "T2starw": dict(RepetitionTime=650.0, EchoTime=20.0, FlipAngle=20.0,
                    ScanningSequence=["GR"], SequenceVariant=["SP", "OSP"],
                    SequenceName="*fl2d1", ScanOptions="", EchoTrainLength=1,
                    ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "DWI_b0": dict(RepetitionTime=5200.0, EchoTime=80.0, FlipAngle=90.0,
                   ScanningSequence=["EP", "SE"], SequenceVariant=["SK", "SP"],
                   SequenceName="*ep_b0", ScanOptions="FS", EchoTrainLength=1,
                   DiffusionBValue=0.0,
                   ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND"]),
    "DWI_b1000": dict(RepetitionTime=5200.0, EchoTime=80.0, FlipAngle=90.0,
                      ScanningSequence=["EP", "SE"], SequenceVariant=["SK", "SP"],
                      SequenceName="*ep_b1000t", ScanOptions="FS", EchoTrainLength=1,
                      DiffusionBValue=1000.0,
                      ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]),
    "ADC": dict(RepetitionTime=5200.0, EchoTime=80.0, FlipAngle=90.0,
                ScanningSequence=["EP", "SE"], SequenceVariant=["SK", "SP"],
                SequenceName="*ep_b0_1000", ScanOptions="FS", EchoTrainLength=1,
                ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"]),
    "spine_T2w": dict(RepetitionTime=3500.0, EchoTime=100.0, FlipAngle=160.0,
                      ScanningSequence=["SE"], SequenceVariant=["SK", "SP", "OSP"],
                      SequenceName="*tse2d1_17", ScanOptions="", EchoTrainLength=17,
                      ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
    "spine_T1w": dict(RepetitionTime=600.0, EchoTime=9.5, FlipAngle=150.0,
                      ScanningSequence=["SE"], SequenceVariant=["SK", "SP", "OSP"],
                      SequenceName="*tse2d1_3", ScanOptions="", EchoTrainLength=3,
                      ImageType=["ORIGINAL", "PRIMARY", "M", "NORM", "ND"]),
}

#: Series description shown by the scanner (the classifier must not need it).
DESCRIPTIONS: dict[str, str] = {
    "T1w": "t1_mprage_sag_p2_iso", "T1w_post": "t1_mprage_post_gd", "T2w": "t2_tse_tra",
    "FLAIR": "t2_tirm_tra_dark-fluid", "T2starw": "t2_fl2d_tra_hemo", "DWI_b0": "ep2d_diff_b0",
    "DWI_b1000": "ep2d_diff_b1000_TRACEW", "ADC": "ep2d_diff_ADC", "spine_T2w": "t2_tse_sag_cspine",
    "spine_T1w": "t1_tse_sag_cspine",
}


def uid_from(*parts: object) -> str:
    """Deterministic DICOM UID (pydicom root + decimal digest of the parts)."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    digits = str(int(h[:30], 16))
    return (PYDICOM_ROOT_UID + digits)[:64]


@dataclass
class PatientInfo:
    """Fake identity; every string contains PHI_MARKER."""

    patient_id: str
    seed: int
    birth_date: str = "19600101"
    sex: str = "F"
    extra: dict[str, str] = field(default_factory=dict)

    def tags(self) -> dict[str, Any]:
        n = self.patient_id
        return {
            "PatientName": f"{PHI_MARKER}^{n}^Test",
            "PatientID": f"{PHI_MARKER}-{n}",
            "PatientBirthDate": self.birth_date,
            "PatientSex": self.sex,
            "PatientAge": "060Y",
            "PatientWeight": 70.0,
            "PatientAddress": f"{PHI_MARKER} 1 Fake Street, Nowhere",
            "OtherPatientIDs": f"{PHI_MARKER}-MRN-{n}",
            "InstitutionName": f"{PHI_MARKER} General Hospital",
            "InstitutionAddress": f"{PHI_MARKER} Hospital Road 2",
            "ReferringPhysicianName": f"{PHI_MARKER}^Referrer",
            "PerformingPhysicianName": f"{PHI_MARKER}^Performer",
            "OperatorsName": f"{PHI_MARKER}^Operator",
            "StationName": f"{PHI_MARKER}STN",
            "DeviceSerialNumber": f"{PHI_MARKER}{self.seed % 100000:05d}",
            "InstitutionalDepartmentName": f"{PHI_MARKER} Radiology",
            "RequestingPhysician": f"{PHI_MARKER}^Requester",
        }


def _ds_value(v: Any) -> Any:
    return [str(x) for x in v] if isinstance(v, list) else v


def write_series(volume: np.ndarray, affine: np.ndarray, out_dir: Path, *, kind: str,
                 patient: PatientInfo, study_uid: str, series_uid: str, series_number: int,
                 study_date: dt.date, study_time: str, accession: str, body_part: str,
                 description: str | None = None, rescale: tuple[float, float] = (1.0, 0.0),
                 contrast_agent: str | None = None, frame_of_reference_uid: str = "",
                 field_strength: float = 3.0, thickness_mm: float | None = None) -> list[Path]:
    """Write ``volume`` (i, j, k; values already integers in uint16 range) as DICOM.

    ``affine``: voxel -> world RAS+ mm. ``rescale`` = (slope, intercept):
    real value = stored * slope + intercept. ``thickness_mm``: SliceThickness
    (default: the slice spacing, i.e. no gap). Returns the written file paths.
    """
    if volume.ndim != 3:
        raise ValueError(f"{out_dir}: expected a 3D volume, got shape {volume.shape}")
    vol = np.asarray(volume)
    if vol.min() < 0 or vol.max() > 65535:
        raise ValueError(f"{out_dir}: stored values outside uint16 range")
    vol16 = np.rint(vol).astype(np.uint16)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = np.asarray(affine, float)
    sp = np.linalg.norm(a[:3, :3], axis=0)
    row_dir = _FLIP @ (a[:3, 0] / sp[0])  # direction of increasing column index (i)
    col_dir = _FLIP @ (a[:3, 1] / sp[1])  # direction of increasing row index (j)
    params = SEQUENCE_PARAMS[kind]
    n_k = vol.shape[2]
    paths = []
    p99 = int(np.percentile(vol16, 99))
    thickness = float(thickness_mm if thickness_mm is not None else sp[2])
    for k in range(n_k):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = uid_from(series_uid, k)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(PYDICOM_ROOT_UID + "1")
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference_uid or uid_from(study_uid, "for")
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.ManufacturerModelName = "Prisma_fit"
        ds.SoftwareVersions = "syngo MR E11"
        ds.MagneticFieldStrength = field_strength
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = \
            study_date.strftime("%Y%m%d")
        ds.StudyTime = study_time
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
        ds.AccessionNumber = accession
        ds.StudyID = "1"
        ds.StudyDescription = "SYNTH^Trial head and spine"
        for key, val in patient.tags().items():
            setattr(ds, key, val)
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.SeriesDescription = description if description is not None else DESCRIPTIONS[kind]
        ds.ProtocolName = ds.SeriesDescription
        ds.BodyPartExamined = body_part
        ds.PatientPosition = "HFS"
        for key, val in params.items():
            setattr(ds, key, _ds_value(val))
        ds.MRAcquisitionType = "3D" if kind.startswith("T1w") else "2D"
        ds.EchoNumbers = 1
        ds.ImagingFrequency = 123.25
        ds.ImagedNucleus = "1H"
        ds.NumberOfAverages = 1
        ds.PixelBandwidth = 240.0
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = float(sp[2])
        ds.AcquisitionMatrix = [0, int(vol.shape[0]), int(vol.shape[1]), 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        if contrast_agent:
            ds.ContrastBolusAgent = contrast_agent
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = 7.5
        ds.ImageOrientationPatient = [float(round(v, 8)) for v in (*row_dir, *col_dir)]
        pos = _FLIP @ (a[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a[:3, 3])
        ds.ImagePositionPatient = [float(round(v, 6)) for v in pos]
        ds.SliceLocation = float(round(float(np.dot(pos, np.cross(row_dir, col_dir))), 6))
        ds.PixelSpacing = [float(round(sp[1], 8)), float(round(sp[0], 8))]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(vol.shape[1])
        ds.Columns = int(vol.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = rescale[0]
        ds.RescaleIntercept = rescale[1]
        ds.RescaleType = "US"
        sl = np.ascontiguousarray(vol16[:, :, k].T)
        ds.WindowCenter = p99 // 2 + 1
        ds.WindowWidth = p99 + 1
        ds.PixelData = sl.tobytes()
        p = out_dir / f"IM{k + 1:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
