"""Evidence montage orientation on a real image and the registration check."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import need_data
from PIL import Image
from scipy import ndimage as ndi

from mri_safety.dicom.series import load_series_dir
from mri_safety.dicom.volume import convert_series
from mri_safety.evidence import MontageCandidate, render_montage, render_regcheck
from mri_safety.evidence.regcheck import canny_edges

# patient's RIGHT, ANTERIOR and SUPERIOR of the head centre (world RAS+ mm)
TARGET = (30.0, 30.0, 30.0)


@pytest.fixture(scope="module")
def hfs() -> nib.Nifti1Image:
    """Real 2D sagittal T1 (voxel axes P, I, R: display needs reorientation)."""
    vol = convert_series(load_series_dir(need_data("dicom", "patient-positions", "HFS"))[0])
    img = nib.Nifti1Image(vol.scaled(), vol.affine)
    assert nib.aff2axcodes(img.affine) == ("P", "I", "R")
    return img


def _rot(axis: int, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Reference cubes 50 mm to the patient's LEFT / POSTERIOR / INFERIOR of the
# target, each lying in exactly one of the three planes through the target:
# the target must appear on the R / A / S side of it, wherever that is drawn.
REFS = {
    "axial": (TARGET[0] - 50, TARGET[1] - 50, TARGET[2]),     # left + posterior
    "coronal": (TARGET[0] - 50, TARGET[1], TARGET[2] - 50),   # left + inferior
    "sagittal": (TARGET[0], TARGET[1] - 50, TARGET[2] - 50),  # posterior + inferior
}
HI, MID = 4.0, 2.0  # target and reference intensities (x image max)


def _paint(img: nib.Nifti1Image, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image data and a copy with bright 12 mm cubes at TARGET (HI) and REFS
    (MID), positions in world RAS+ mm."""
    d = np.asarray(img.dataobj, dtype=np.float32)
    ijk = np.indices(d.shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    painted = d.copy()
    for point, level in [(TARGET, HI), *[(p, MID) for p in REFS.values()]]:
        cube = (np.abs(world - np.array(point)[:, None]) <= 6.0).all(0).reshape(d.shape)
        assert cube.sum() > 50
        painted[cube] = level * d.max()
    return d, painted


def _blob_rc(panel: np.ndarray, lo: float, hi: float,
             away_from: tuple[float, float, tuple[float, float]] | None = None
             ) -> tuple[float, float]:
    """Centre (row, col) of the display pixels with lo < value <= hi; with
    ``away_from=(row, col, pixel_mm)`` only pixels > 20 mm from that point
    (the interpolated rim of the target passes through the reference level)."""
    sel = (panel > lo) & (panel <= hi)
    if away_from is not None:
        r0, c0, (ph, pw) = away_from
        rows, cols = np.indices(panel.shape)
        sel &= np.hypot((rows - r0) * ph, (cols - c0) * pw) > 20.0
    r, c = np.nonzero(sel)
    assert r.size > 0
    return float(r.mean()), float(c.mean())


@pytest.mark.parametrize("oblique", [False, True], ids=["axis-aligned", "oblique"])
def test_marker_lands_on_the_correct_side_with_correct_letters(
        hfs: nib.Nifti1Image, oblique: bool, tmp_path: Path) -> None:
    aff = _rot(2, 25) @ _rot(0, 10) @ hfs.affine if oblique else hfs.affine
    d, painted = _paint(hfs, aff)
    top = float(d.max())
    base = nib.Nifti1Image(d, aff)
    fu = nib.Nifti1Image(painted, aff)
    diff = nib.Nifti1Image(painted - d, aff)
    cand = MontageCandidate("cand-001", "new hyperintensity", TARGET, 1728.0, "right frontal", 9.5)
    png = tmp_path / "montage.png"
    res = render_montage(base, fu, diff, cand, png, fov_mm=None)
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] > 500
    want_top = {"axial": "A", "coronal": "S", "sagittal": "S"}
    want_left = {"axial": "R", "coronal": "R", "sagittal": "A"}
    for plane in ("axial", "coronal", "sagittal"):
        s = res.panel("follow-up", plane).slice
        # interpolation of the oblique case blurs cube edges: take the cores
        r, c = _blob_rc(s.data, 0.5 * (HI + MID) * top, np.inf)
        rr, rc = _blob_rc(s.data, 0.8 * MID * top, 1.2 * MID * top, (r, c, s.pixel_mm))
        # the crosshair (marker) sits on the target cube
        assert abs(r - s.marker_rc[0]) * s.pixel_mm[0] < 3.0
        assert abs(c - s.marker_rc[1]) * s.pixel_mm[1] < 3.0
        # the target is R / A / S of its reference: the letter on its side says so
        assert (s.letters["left"] if c < rc else s.letters["right"]) == want_left[plane]
        assert (s.letters["top"] if r < rr else s.letters["bottom"]) == want_top[plane]
        # and the reference is 50 mm away on both display axes (within 2 pixels:
        # 4.8 mm slices sample the 12 mm cubes coarsely)
        assert abs(abs(rc - c) * s.pixel_mm[1] - 50) < max(5.0, 2 * s.pixel_mm[1])
        assert abs(abs(rr - r) * s.pixel_mm[0] - 50) < max(5.0, 2 * s.pixel_mm[0])
        # difference row: same geometry, target shows as an increase
        sd = res.panel("difference", plane).slice
        assert sd.marker_rc == s.marker_rc and sd.letters == s.letters
        assert sd.data[int(round(r)), int(round(c))] > 0


def test_montage_rejects_mismatched_grids(hfs: nib.Nifti1Image) -> None:
    d = np.asarray(hfs.dataobj, dtype=np.float32)
    other = nib.Nifti1Image(d[:, :, :20], hfs.affine)
    with pytest.raises(ValueError, match="cand-x"):
        render_montage(hfs, other, hfs, MontageCandidate("cand-x", "t", (0, 0, 0), 1.0))


def test_regcheck_edges_follow_misregistration(hfs: nib.Nifti1Image, tmp_path: Path) -> None:
    d = np.asarray(hfs.dataobj, dtype=np.float32)
    shifted = nib.Nifti1Image(ndi.shift(d, (6, 0, 0), order=1), hfs.affine)  # 6 mm posterior
    ok = render_regcheck(hfs, hfs, tmp_path / "ok.png")
    bad = render_regcheck(hfs, shifted, tmp_path / "bad.png", out_gif=tmp_path / "bad.gif")
    assert (tmp_path / "ok.png").stat().st_size > 10_000
    gif = Image.open(tmp_path / "bad.gif")
    assert gif.n_frames == 2
    for plane in ("axial", "sagittal"):  # planes containing the A-P axis
        s = ok.fixed[plane]
        lo, hi = np.percentile(d[d > 0], [1, 99.5])
        fixed_edges = canny_edges(s.data, float(lo), float(hi))
        dist = ndi.distance_transform_edt(~fixed_edges)
        d_ok = float(np.mean(dist[ok.moving_edges[plane]]))
        d_bad = float(np.mean(dist[bad.moving_edges[plane]]))
        assert d_ok < 0.5 < d_bad, (plane, d_ok, d_bad)


def test_previous_visit_comparison_is_not_labelled_baseline(hfs: nib.Nifti1Image) -> None:
    """A follow-up compared with the previous visit: the rows name the two
    sessions, never "baseline" (a radiologist reads the reference row as it)."""
    from mri_safety.evidence import montage

    rows, diff = montage.comparison_labels("sub-A1_ses-24h_FLAIR.nii.gz",
                                           "sub-A1_ses-M2_FLAIR.nii.gz")
    assert rows == ("reference ses-24h", "follow-up ses-M2", "z")
    assert diff == "z (ses-M2 - ses-24h)" and "baseline" not in " ".join(rows) + diff
    cand = MontageCandidate("cand-2", "t", TARGET, 1.0)
    res = render_montage(hfs, hfs, hfs, cand, row_labels=rows)
    assert res.row_labels == rows
    with pytest.raises(ValueError, match="row_labels"):
        render_montage(hfs, hfs, hfs, cand, row_labels=rows[:2])  # type: ignore[arg-type]
