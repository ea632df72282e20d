"""Acquisitions as a scanner makes them, from a subject-space image.

Coordinate conventions: the subject space is the anatomy grid's world RAS+ mm.
A visit's head *pose* is a 4x4 RAS matrix ``M`` mapping subject points to
scanner points (the head moved by ``M``). An acquisition grid has a voxel ->
scanner world RAS+ affine. A scanner voxel centre ``p`` therefore samples the
subject at ``M^-1 p``. 2D series are formed by integrating the subject image
over the slice profile (thickness; slices are ``thickness + gap`` apart)
before noise; then a smooth multiplicative bias field, a global gain and
Rician noise are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

#: Grid axes (columns i, rows j, slices k) in RAS for each orientation, chosen as
#: scanners write them (axial: i -> patient left, j -> posterior, k -> superior).
_AXES: dict[str, np.ndarray] = {
    "axial": np.array([[-1, 0, 0], [0, -1, 0], [0, 0, 1]], float).T,
    "sagittal": np.array([[0, -1, 0], [0, 0, -1], [-1, 0, 0]], float).T,
    "coronal": np.array([[-1, 0, 0], [0, 0, -1], [0, 1, 0]], float).T,
}


@dataclass(frozen=True)
class AcqSpec:
    """One series' geometry. Sizes in mm; ``fov_mm`` = (along i, along j)."""

    contrast: str
    mode: str  # "2d" | "3d"
    orientation: str  # axial | sagittal | coronal
    inplane_mm: tuple[float, float]
    thickness_mm: float
    gap_mm: float
    fov_mm: tuple[float, float]
    coverage_mm: float
    tilt_deg: float = 0.0  # rotation of the slice stack about the patient LR axis

    @property
    def spacing_mm(self) -> float:
        return self.thickness_mm + self.gap_mm


def pose_matrix(rot_deg: tuple[float, float, float], trans_mm: tuple[float, float, float],
                centre_ras: np.ndarray) -> np.ndarray:
    """Rigid 4x4 RAS matrix: rotate (xyz Euler, degrees) about ``centre_ras``, then translate."""
    r = Rotation.from_euler("xyz", rot_deg, degrees=True).as_matrix()
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = np.asarray(centre_ras) - r @ np.asarray(centre_ras) + np.asarray(trans_mm)
    return m


def random_pose(rng: np.random.Generator, centre_ras: np.ndarray, max_deg: float = 10.0,
                max_mm: float = 15.0) -> np.ndarray:
    """Random rigid repositioning with |angle| <= max_deg per axis, |shift| <= max_mm."""
    ang = rng.uniform(-1, 1, 3) * max_deg * np.array([1.0, 0.6, 0.6])
    sh = rng.uniform(-1, 1, 3)
    sh = sh / max(float(np.linalg.norm(sh)), 1e-6) * float(rng.uniform(0, max_mm))
    return pose_matrix(tuple(ang), tuple(sh), centre_ras)


def grid_affine(spec: AcqSpec, centre_scanner: np.ndarray
                ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxel -> scanner RAS affine and shape of the acquisition grid centred on a point."""
    axes = _AXES[spec.orientation].copy()
    if spec.tilt_deg:
        axes = Rotation.from_euler("x", spec.tilt_deg, degrees=True).as_matrix() @ axes
    n_i = int(round(spec.fov_mm[0] / spec.inplane_mm[0]))
    n_j = int(round(spec.fov_mm[1] / spec.inplane_mm[1]))
    n_k = max(1, int(round(spec.coverage_mm / spec.spacing_mm)))
    sp = np.array([spec.inplane_mm[0], spec.inplane_mm[1], spec.spacing_mm])
    aff = np.eye(4)
    aff[:3, :3] = axes * sp
    half = (np.array([n_i, n_j, n_k]) - 1) / 2.0
    aff[:3, 3] = np.asarray(centre_scanner) - aff[:3, :3] @ half
    return aff, (n_i, n_j, n_k)


def sample(subject: np.ndarray, subject_affine: np.ndarray, pose: np.ndarray, spec: AcqSpec,
           grid: np.ndarray, shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Noise-free image on the acquisition grid (slice-profile integrated for 2D).

    ``subject`` is on the grid ``subject_affine`` (voxel -> subject RAS).
    The slice profile is a flat top of the nominal thickness with cosine
    edges (FWHM = thickness); the in-plane PSF is a Gaussian whose width
    matches the in-plane voxel when it is coarser than the subject grid.
    """
    vox = float(np.mean(np.linalg.norm(subject_affine[:3, :3], axis=0)))
    ip = max(spec.inplane_mm)
    src = subject
    if ip > 1.2 * vox or (spec.mode == "3d" and spec.thickness_mm > 1.2 * vox):
        sig = max(ip, spec.thickness_mm if spec.mode == "3d" else ip) / vox / 2.5
        src = ndi.gaussian_filter(subject, sig)
    if spec.mode == "2d" and spec.thickness_mm > 0.6 * vox:
        n_sub = int(np.ceil(spec.thickness_mm / (0.5 * vox))) | 1
        t = np.linspace(-0.6, 0.6, n_sub) * spec.thickness_mm  # mm from the slice centre
        edge = np.clip((np.abs(t) / spec.thickness_mm - 0.4) / 0.2, 0, 1)
        w = 0.5 * (1 + np.cos(np.pi * edge))
        w /= w.sum()
    else:
        t, w = np.zeros(1), np.ones(1)
    kdir = grid[:3, 2] / np.linalg.norm(grid[:3, 2])
    to_sub = np.linalg.inv(subject_affine) @ np.linalg.inv(pose)
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = grid[:3, :3] @ idx + grid[:3, 3:4]
    out = np.zeros(idx.shape[1], np.float64)
    for tk, wk in zip(t, w, strict=True):
        p = world + (kdir * tk)[:, None]
        v = to_sub[:3, :3] @ p + to_sub[:3, 3:4]
        out += wk * ndi.map_coordinates(src, v, order=order, mode="constant", cval=0.0)
    return out.reshape(shape).astype(np.float32)


def bias_field(grid: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
               strength: float = 0.06) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial in scanner mm / 100)."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    w = (grid[:3, :3] @ idx + grid[:3, 3:4]) / 100.0
    w -= w.mean(1, keepdims=True)
    lin = rng.normal(0, strength, 3)
    quad = rng.normal(0, strength / 2, (3, 3))
    log_b = lin @ w + np.einsum("ip,ij,jp->p", w, quad, w)
    return np.exp(log_b - np.median(log_b)).reshape(shape).astype(np.float32)


def rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the complex signal plus Gaussian noise of ``sigma`` per channel."""
    n1 = rng.normal(0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)


def degrade(clean: np.ndarray, grid: np.ndarray, rng: np.random.Generator, snr: float,
            ref_intensity: float, gain: float, bias_strength: float = 0.06) -> np.ndarray:
    """Bias field x gain, then Rician noise with sigma = ref_intensity / snr."""
    b = bias_field(grid, clean.shape, rng, bias_strength)
    return rician(clean * b * np.float32(gain), ref_intensity / snr, rng)


def vary_spec(spec: AcqSpec, rng: np.random.Generator, fov_change: float = 0.1,
              max_tilt: float = 8.0) -> AcqSpec:
    """A follow-up's geometry: FOV changed by up to +-fov_change, new tilt."""
    f = 1 + rng.uniform(-fov_change, fov_change)
    return replace(spec, fov_mm=(spec.fov_mm[0] * f, spec.fov_mm[1] * f),
                   tilt_deg=float(rng.uniform(-max_tilt, max_tilt)))
