"""Abnormalities with exact truth, built in subject space (anatomy grid).

Every abnormality is a partial-volume *fraction map* (float32 in [0, 1]) on the
anatomy grid plus target intensities per contrast (see
:mod:`mri_safety.synth.contrast`); deformations (mass effect, atrophy) are
backward displacement fields applied to the tissue fractions. Centres are in
world RAS+ mm of the subject space; diameters in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mri_safety.synth.anatomy import CSF, GM, WM, Anatomy

#: Target intensities per abnormality type (units of contrast.TISSUE_MEANS).
VALUES: dict[str, dict[str, float]] = {
    "lesion": {"T1w": 0.62, "T1w_post": 0.62, "T2w": 1.25, "FLAIR": 1.30, "T2starw": 1.0,
               "DWI_b0": 1.15, "ADC": 1.10},
    "enhancing": {"T1w_post": 1.45},
    # acute (the visit it appears at; infarcts appear at the 24 h visit): cytotoxic and
    # early vasogenic oedema, bright on DWI with low ADC and already bright on T2w and
    # FLAIR (FLAIR turns positive within about 6 h), T1w not yet changed
    "infarct": {"T2w": 1.10, "FLAIR": 1.15, "DWI_b0": 1.10, "ADC": 0.38, "T2starw": 0.80},
    "haemorrhage": {"T2starw": 0.04, "T2w": 0.30, "DWI_b0": 0.25, "FLAIR": 0.40},
    "mass": {"T1w": 0.55, "T1w_post": 1.20, "T2w": 1.15, "FLAIR": 1.15, "T2starw": 0.85,
             "DWI_b0": 1.05, "ADC": 0.95},
    "subdural": {"T1w": 0.45, "T1w_post": 0.50, "T2w": 1.45, "FLAIR": 1.15, "T2starw": 1.0,
                 "DWI_b0": 1.45, "ADC": 2.6},
    "ventricles": {},  # ventricular enlargement changes tissue fractions (CSF), no new tissue
}
#: An infarct at a later visit than the one it appeared at (two months or more
#: after 24 h): chronic. The ADC has passed pseudo-normalisation (about 1-2
#: weeks) and is raised, so DWI no longer shows it; gliosis and tissue loss keep
#: T2w and FLAIR bright and make it dark on T1w (Allen et al., RadioGraphics
#: 2012, "Sequence-specific MR imaging findings that are useful in dating
#: ischemic stroke").
CHRONIC_INFARCT: dict[str, float] = {"T1w": 0.50, "T1w_post": 0.50, "T2w": 1.25, "FLAIR": 1.10,
                                     "DWI_b0": 1.25, "ADC": 1.30, "T2starw": 0.90}


@dataclass
class Abnormality:
    """One abnormality of a synthetic patient (truth record).

    ``kind``: lesion | enlarging | mass | enhancing | infarct | haemorrhage |
    subdural | ventricles | cord_lesion | syrinx. ``site``: wm | gm |
    periventricular | brainstem | convexity | cord ... ``centre_ras``: world
    RAS+ mm (subject space). ``diameter_mm``: nominal size. ``appears``: index
    of the first visit where it is present (0 = baseline, e.g. for the
    pre-existing part of an enlarging lesion). ``seed``: shape randomness.
    """

    kind: str
    site: str
    centre_ras: tuple[float, float, float]
    diameter_mm: float
    appears: int
    seed: int
    grow_factor: float = 1.0  # enlarging lesion: diameter at follow-ups / at baseline
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, float]:
        """Target intensities when it appears (units of ``contrast.TISSUE_MEANS``)."""
        key = {"enlarging": "lesion", "cord_lesion": "lesion"}.get(self.kind, self.kind)
        return VALUES.get(key, {})

    def values_at(self, visit: int) -> dict[str, float]:
        """Target intensities at ``visit`` (index; 0 = baseline): an infarct seen
        again after the visit it appeared at is chronic (:data:`CHRONIC_INFARCT`);
        everything else keeps :attr:`values`."""
        if self.kind == "infarct" and visit > self.appears:
            return CHRONIC_INFARCT
        return self.values


def _world_grid(anat: Anatomy, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...],
                                                                         np.ndarray]:
    """Voxel box covering world RAS box [lo, hi] and world coords of its voxels (3, ...)."""
    inv = np.linalg.inv(anat.affine)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    vox = (inv[:3, :3] @ corners.T).T + inv[:3, 3]
    a = np.clip(np.floor(vox.min(0)).astype(int), 0, None)
    b = np.minimum(np.ceil(vox.max(0)).astype(int) + 1, anat.shape)
    sl = tuple(slice(int(i), int(j)) for i, j in zip(a, b, strict=True))
    idx = np.indices(tuple(int(j - i) for i, j in zip(a, b, strict=True)), dtype=np.float32)
    idx += a.reshape(3, 1, 1, 1).astype(np.float32)
    world = np.tensordot(anat.affine[:3, :3].astype(np.float32), idx, axes=1)
    world += anat.affine[:3, 3].reshape(3, 1, 1, 1).astype(np.float32)
    return sl, world


def blob_at(world: np.ndarray, centre: np.ndarray, diameter_mm: float, seed: int,
            scale: float = 1.0, edge_mm: float = 1.0) -> np.ndarray:
    """Fraction of an irregular blob at world points ``world`` (3, ...), RAS mm.

    Random ellipsoid (seeded axes and rotation) with a smooth radial
    perturbation (six random spherical harmonics-like terms); the edge is a
    linear ramp ``edge_mm`` wide around the surface, approximating the
    partial volume of a voxel of that size. ``scale`` multiplies the radius
    (an enlarging lesion keeps its shape).
    """
    rng = np.random.default_rng(seed)
    r = 0.5 * diameter_mm * scale
    axes = rng.uniform(0.75, 1.25, 3)
    axes /= np.prod(axes) ** (1 / 3)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    harm = rng.normal(size=(6, 3))
    amp = rng.uniform(0.08, 0.2, 6)
    d = (world - centre.reshape((3,) + (1,) * (world.ndim - 1))).astype(np.float32)
    local = np.tensordot(rot.T.astype(np.float32), d, axes=1)
    dist = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(3))) + 1e-6
    u = local / dist
    pert = 1.0 + sum(amp[k] * np.sin(np.tensordot(harm[k].astype(np.float32), u, axes=1) * 2.0
                                     + k) for k in range(6)) / 2.0
    surface = r * pert
    return np.clip(0.5 + (surface - dist) / edge_mm, 0.0, 1.0).astype(np.float32)


def blob_fraction(anat: Anatomy, centre: np.ndarray, diameter_mm: float, seed: int,
                  scale: float = 1.0) -> np.ndarray:
    """:func:`blob_at` on the anatomy grid (edge one voxel wide)."""
    out = np.zeros(anat.shape, np.float32)
    m = 0.5 * diameter_mm * scale * 1.6 + 2 * anat.voxel_mm
    sl, world = _world_grid(anat, centre - m, centre + m)
    out[sl] = blob_at(world, centre, diameter_mm, seed, scale, anat.voxel_mm)
    return out


def pick_site(anat: Anatomy, site: str, rng: np.random.Generator, margin_mm: float) -> np.ndarray:
    """A random world RAS point in the named region (deterministic for ``rng``)."""
    vox = anat.voxel_mm
    if site == "brainstem":
        mni = np.array([rng.uniform(-4, 4), rng.uniform(-30, -24), rng.uniform(-38, -26), 1.0])
        return (anat.mni_to_subject @ mni)[:3]
    if site == "convexity":  # a point on the inner table over the lateral convexity
        side = rng.choice([-1.0, 1.0])
        mni = np.array([side * 50, rng.uniform(-30, 10), 45, 1.0])
        p = (anat.mni_to_subject @ mni)[:3]
        icv_m = anat.intracranial_mask()
        edge = icv_m & ~ndi.binary_erosion(icv_m)
        pts = np.argwhere(edge)
        world = pts @ anat.affine[:3, :3].T + anat.affine[:3, 3]
        return np.asarray(world[np.argmin(((world - p) ** 2).sum(1))], float)
    wm = anat.probs[WM] > 0.9
    gm = anat.probs[GM] > 0.7
    icv = anat.intracranial_mask()
    depth = ndi.distance_transform_edt(icv) * vox
    if site == "wm":
        mask = ndi.distance_transform_edt(wm) * vox > margin_mm
    elif site == "gm":
        mask = gm & (depth > 6) & (depth < 15)
    elif site == "periventricular":
        vent = (anat.probs[CSF] > 0.8) & (depth > 25)
        dv = ndi.distance_transform_edt(~vent) * vox
        mask = wm & (dv > 1.5) & (dv < 1.5 + margin_mm)
    elif site == "deep":
        mask = (anat.probs[WM] + anat.probs[GM] > 0.95) & (depth > 20 + margin_mm)
    else:
        raise ValueError(f"unknown lesion site {site!r}")
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise ValueError(f"no voxels for site {site!r} (margin {margin_mm} mm)")
    v = idx[rng.integers(len(idx))].astype(float)
    return (anat.affine[:3, :3] @ v + anat.affine[:3, 3])


def subdural_fraction(anat: Anatomy, centre: np.ndarray, thickness_mm: float,
                      radius_mm: float) -> np.ndarray:
    """Crescent under the inner table: within ``thickness_mm`` of the intracranial edge."""
    icv = anat.intracranial_mask()
    depth = ndi.distance_transform_edt(icv) * anat.voxel_mm
    idx = np.indices(anat.shape, dtype=np.float32)
    world = np.tensordot(anat.affine[:3, :3].astype(np.float32), idx, axes=1)
    world += anat.affine[:3, 3].reshape(3, 1, 1, 1).astype(np.float32)
    rr = np.sqrt(((world - centre.reshape(3, 1, 1, 1)) ** 2).sum(0))
    # lens shape: thickest at the centre, thinning to the rim
    t = thickness_mm * np.clip(1 - (rr / radius_mm) ** 2, 0, 1)
    frac = np.clip(0.5 + (t - depth) / anat.voxel_mm, 0, 1) * icv
    frac[t <= 0] = 0
    return ndi.gaussian_filter(frac.astype(np.float32), 0.4)


def ventricle_growth(anat: Anatomy, probs: np.ndarray, dilate_mm: float) -> np.ndarray:
    """Tissue fractions with enlarged ventricles (CSF replaces periventricular tissue)."""
    icv = anat.intracranial_mask()
    depth = ndi.distance_transform_edt(icv) * anat.voxel_mm
    vent = (probs[CSF] > 0.5) & (depth > 22)
    lab, n = ndi.label(vent)
    if n > 1:  # keep the big (lateral ventricle) components
        sizes = ndi.sum(vent, lab, range(1, n + 1))
        keep = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
        vent = np.isin(lab, keep)
    dv = ndi.distance_transform_edt(~vent) * anat.voxel_mm
    new_csf = np.clip(0.5 + (dilate_mm - dv) / anat.voxel_mm, 0, 1).astype(np.float32)
    new_csf *= icv
    out = probs.copy()
    gain = np.clip(new_csf - out[CSF], 0, 1)
    tissue = out[GM] + out[WM]
    scale = np.where(tissue > 1e-6, np.clip(1 - gain / np.maximum(tissue, 1e-6), 0, 1), 1)
    out[GM] *= scale
    out[WM] *= scale
    out[CSF] += tissue * (1 - scale)
    return out


def _backward_warp(arrs: np.ndarray, disp_vox: np.ndarray, sl: tuple[slice, ...]) -> None:
    """In place: arrs[..., sl] sampled at (voxel + disp_vox) (linear)."""
    shape = disp_vox.shape[1:]
    base = np.indices(shape, dtype=np.float32)
    for k, s in enumerate(sl):
        base[k] += s.start
    coords = base + disp_vox
    for c in range(arrs.shape[0]):
        arrs[c][sl] = ndi.map_coordinates(arrs[c], coords, order=1, mode="nearest")


def mass_effect(anat: Anatomy, probs: np.ndarray, texture: np.ndarray, centre: np.ndarray,
                radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Push tissue radially away from ``centre`` as a sphere of ``radius_mm`` grows.

    Backward map for distance d > R: source distance (d^3 - R^3)^(1/3)
    (volume-preserving displacement of an incompressible medium), tapered to
    zero by ~4 R so the skull does not move. Returns warped (probs, texture).
    """
    probs = probs.copy()
    texture = texture.copy()
    m = 4.5 * radius_mm
    sl, world = _world_grid(anat, centre - m, centre + m)
    d = world - centre.reshape(3, 1, 1, 1).astype(np.float32)
    dist = np.sqrt((d**2).sum(0)) + 1e-6
    src = np.cbrt(np.clip(dist**3 - radius_mm**3, 0, None))
    taper = np.exp(-((dist / (2.5 * radius_mm)) ** 2))
    shrink = 1 - (1 - src / dist) * taper
    disp_world = d * (shrink - 1)
    inv = np.linalg.inv(anat.affine[:3, :3]).astype(np.float32)
    disp_vox = np.tensordot(inv, disp_world, axes=1)
    _backward_warp(probs, disp_vox, sl)
    tex = texture[None]
    _backward_warp(tex, disp_vox, sl)
    return probs, tex[0]


def atrophy(anat: Anatomy, probs: np.ndarray, fraction: float) -> np.ndarray:
    """Global brain volume loss ``fraction`` (e.g. 0.005): GM+WM shrink, CSF fills.

    Brain tissue fractions are resampled with a uniform scaling about the
    brain centroid (linear factor (1 - fraction)^(1/3)); the intracranial
    volume is unchanged and the difference becomes CSF.
    """
    if fraction <= 0:
        return probs
    out = probs.copy()
    brain = anat.brain_mask()
    c = np.array(ndi.center_of_mass(brain))
    s = (1 - fraction) ** (1 / 3)
    mat = np.eye(3) / s
    offset = c - mat @ c
    icv = probs[CSF] + probs[GM] + probs[WM]
    for k in (GM, WM):
        out[k] = ndi.affine_transform(probs[k], mat, offset=offset, order=1, mode="nearest")
    tissue = np.minimum(out[GM] + out[WM], icv)
    tot = np.maximum(out[GM] + out[WM], 1e-6)
    out[GM] *= tissue / tot
    out[WM] *= tissue / tot
    out[CSF] = np.clip(icv - tissue, 0, 1)
    return out
