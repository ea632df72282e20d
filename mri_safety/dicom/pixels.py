"""Pixel data decoding for one DICOM dataset: plain frames, Siemens mosaics, multi-frame.

Decoding goes through pydicom's pixel handlers; compressed transfer syntaxes
(JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE, HTJ2K) need the
pylibjpeg plugins (or pyjpegls / pillow), which :func:`check_decodable`
verifies up front so a missing plugin gives a clear error instead of a pydicom
traceback.

Array conventions: pydicom returns ``(rows, columns)`` per frame (``(frames,
rows, columns)`` for multi-frame); functions here that build volumes return
``(columns, rows, ...)`` i.e. ``(i, j, ...)`` with ``i`` = DICOM column index,
matching :mod:`mri_safety.dicom.geometry`. Values are the stored integers, no
rescale applied (callers carry RescaleSlope / RescaleIntercept separately).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

with warnings.catch_warnings():
    # nibabel warns on import that its DICOM readers are "experimental"; we use
    # only the Siemens CSA parser and the mosaic un-tiling + position fix-up,
    # both long-standing and checked against dcm2niix in the tests.
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader
    from nibabel.nicom.dicomwrappers import MosaicWrapper, WrapperError

from mri_safety.dicom.geometry import orientation_cosines


class PixelDataError(ValueError):
    """Pixel data absent, undecodable or of an unsupported kind (message says which)."""


def check_decodable(ds: Dataset) -> None:
    """Raise :class:`PixelDataError` unless ``ds`` has pixel data pydicom can decode here."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelDataError("no PixelData element (header-only or non-image object)")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        pi = ds.get("PhotometricInterpretation", "?")
        raise PixelDataError(
            f"SamplesPerPixel={spp} ({pi}): colour images are not MR volumes, not converted"
        )
    meta = getattr(ds, "file_meta", None)
    tsuid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if tsuid is None:
        return  # raw dataset without meta: pydicom decodes as implicit/explicit LE
    uid = pydicom.uid.UID(str(tsuid))
    if not uid.is_compressed:
        return
    try:
        dec = get_decoder(uid)
    except (NotImplementedError, ValueError) as exc:
        raise PixelDataError(f"no decoder for transfer syntax {uid} ({uid.name})") from exc
    if not dec.is_available:
        missing = "; ".join(str(m) for m in dec.missing_dependencies) or "none"
        raise PixelDataError(
            f"transfer syntax {uid.name} cannot be decoded: install a pydicom plugin "
            f"(pylibjpeg + pylibjpeg-libjpeg / -openjpeg / -rle); missing: {missing}"
        )


def stored_frames(ds: Dataset) -> NDArray[Any]:
    """Stored pixel values as ``(frames, rows, columns)`` (no rescale, no transpose)."""
    check_decodable(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt/truncated data
        raise PixelDataError(
            f"pixel data could not be decoded: {type(exc).__name__}: {exc}"
        ) from exc
    arr = np.asarray(arr)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.shape[1:] != (rows, cols):
        raise PixelDataError(
            f"decoded pixel array shape {arr.shape} does not match Rows={rows}, Columns={cols}"
        )
    return arr


def rescale_of(item: Dataset) -> tuple[float, float]:
    """``(slope, intercept)`` from RescaleSlope/Intercept in ``item`` (1, 0 when absent)."""
    slope = item.get("RescaleSlope")
    inter = item.get("RescaleIntercept")
    s = float(slope) if slope not in (None, "") else 1.0
    b = float(inter) if inter not in (None, "") else 0.0
    if s == 0.0 or not np.isfinite(s) or not np.isfinite(b):
        raise PixelDataError(f"invalid RescaleSlope/RescaleIntercept {slope!r}/{inter!r}")
    return s, b


def is_mosaic(ds: Dataset) -> bool:
    """True for a Siemens mosaic (ImageType contains MOSAIC)."""
    itype = ds.get("ImageType") or []
    if isinstance(itype, str):
        itype = itype.split("\\")
    return any(str(v).upper() == "MOSAIC" for v in itype)


@dataclass
class MosaicVolume:
    """One Siemens mosaic un-tiled to ``(i, j, k)`` with its geometry.

    ``data`` is ``(columns, rows, slices)`` stored values, slices ascending
    along the IOP normal ``row_cosine x column_cosine`` (reordered from the
    acquisition order when Siemens' CSA SliceNormalVector points the other
    way, see ``reversed_slices``). ``ipp`` is the LPS mm centre of voxel
    (0, 0, 0) after nibabel's mosaic position fix-up; ``slice_vector`` the LPS
    mm step per ``k``. ``slice_times_s`` are per-``k`` acquisition times in
    seconds from the CSA MosaicRefAcqTimes (``None`` when absent).
    """

    data: NDArray[Any]
    iop: NDArray[np.float64]
    ipp: NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    slice_vector: NDArray[np.float64]
    reversed_slices: bool
    slice_times_s: list[float] | None
    csa: dict[str, Any]


def unmosaic(ds: Dataset) -> MosaicVolume:
    """Un-tile a Siemens mosaic using nibabel's MosaicWrapper (CSA header).

    The slice step is ``SpacingBetweenSlices`` (else ``SliceThickness``) mm along
    the CSA slice normal, as in nibabel and dcm2niix.
    """
    check_decodable(ds)
    try:
        w = MosaicWrapper(ds)
        raw = np.asarray(w.get_unscaled_data())  # (rows, cols, n) in mosaic order
        ipp = np.asarray(w.image_position, dtype=np.float64)
        csa_normal = np.asarray(w.slice_normal, dtype=np.float64)
        vox = w.voxel_sizes
    except (WrapperError, KeyError, ValueError, AssertionError) as exc:
        raise PixelDataError(f"Siemens mosaic could not be un-tiled: {exc}") from exc
    if ipp is None or vox is None:
        raise PixelDataError("mosaic lacks ImagePositionPatient or PixelSpacing")
    iop = np.asarray([float(x) for x in ds.ImageOrientationPatient], dtype=np.float64)
    r, c = orientation_cosines(iop)
    normal = np.cross(r, c)
    spacing = float(vox[2])
    data = raw.transpose(1, 0, 2)  # (cols, rows, n): i = column index
    n = data.shape[2]
    times = None
    try:
        t = csareader.get_vector(w.csa_header, "MosaicRefAcqTimes", n)
        if t is not None:
            times = [float(x) / 1000.0 for x in t]  # CSA stores ms
    except (KeyError, ValueError, csareader.CSAReadError):
        times = None
    reverse = float(csa_normal @ normal) < 0
    if reverse:
        # Put k in ascending order along row x col: the last mosaic tile becomes k=0.
        ipp = ipp + csa_normal * spacing * (n - 1)
        data = data[:, :, ::-1]
        if times is not None:
            times = times[::-1]
    return MosaicVolume(
        data=np.ascontiguousarray(data) if reverse else data,
        iop=iop,
        ipp=ipp,
        pixel_spacing=(float(vox[0]), float(vox[1])),
        slice_vector=np.asarray(normal * spacing, dtype=np.float64),
        reversed_slices=reverse,
        slice_times_s=times,
        csa=dict(w.csa_header),
    )


def csa_image_header(ds: Dataset) -> dict[str, Any]:
    """Siemens CSA image header as a dict (empty when absent or unreadable)."""
    try:
        hdr = csareader.get_csa_header(ds, "image")
    except (csareader.CSAReadError, KeyError, ValueError, TypeError):
        return {}
    return dict(hdr) if hdr else {}


def csa_scalar(csa: dict[str, Any], name: str) -> Any:
    """One scalar from a CSA header dict, ``None`` when absent."""
    try:
        return csareader.get_scalar(csa, name)
    except (KeyError, IndexError, csareader.CSAReadError):
        return None
