"""Subject anatomy for synthetic studies, derived from a real head T1.

The real 3D T1 head (``brain-t1-3d``: skull, scalp, CSF and vessels included)
is resampled to an axis-aligned isotropic working grid ("subject space", world
RAS+ mm, the real scan's world frame). Tissue probability maps are estimated
from it with MNI ICBM152 2009a priors that nilearn ships (registered to the
head with a seeded SimpleITK affine) refined by a prior-weighted Gaussian
mixture on intensity. The real T1's within-class variation is kept as a
multiplicative ``texture`` map so derived contrasts are not cartoonish.

Derived anatomy is cached in ``$XDG_CACHE_HOME/mri-safety/`` (default
``~/.cache/mri-safety``) keyed by a hash of the input voxels, affine, working
voxel size and the algorithm version; never inside the repository.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from mri_safety.register.transforms import subject_to_mni_ras
from mri_safety.synth.sitkutil import array_to_sitk, mattes_register, sitk_to_array
from mri_safety.threads import itk_threads

_DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_ROOT = Path(os.environ.get("MRI_SAFETY_DATA", _DEFAULT_DATA))
HEAD_DICOM_DIR = DATA_ROOT / "dicom" / "brain-t1-3d" / "dicoms"
HEAD_REF_NIFTI = DATA_ROOT / "dicom" / "brain-t1-3d" / "ref" / "anat-T1w.nii.gz"

#: Tissue classes (index into ``Anatomy.probs`` along axis 0).
CLASSES: tuple[str, ...] = ("background", "csf", "gm", "wm", "skull", "scalp", "fat", "vessel")
BG, CSF, GM, WM, SKULL, SCALP, FAT, VESSEL = range(len(CLASSES))
#: cache version of derived anatomies; v4 (2026-12-04): the MNI registration runs on one
#: thread (v3 followed ITK's default thread count, and Mattes MI summed over threads
#: differs by thread count and from run to run: 2e-5 in the affine parameters with 2
#: threads, which moves a tissue mask by a voxel here and there and with it every random
#: lesion placement drawn from it, so two machines generated different studies per seed);
#: v5 (2026-12-05): the MNI fit has the template fixed (v4's was pitched by ~15 mm)
_VERSION = "anatomy-v5"


@dataclass
class Anatomy:
    """Subject anatomy on an axis-aligned isotropic grid.

    ``probs``: (n_classes, X, Y, Z) float32 tissue fractions summing to 1 per
    voxel. ``texture``: (X, Y, Z) float32 multiplicative within-class variation
    of the real T1 (1 = class mean). ``t1``: the real T1 on the grid (arbitrary
    units, scaled so WM ~ 1). ``affine``: voxel -> world RAS+ mm.
    ``mni_to_subject``: 4x4 RAS mm matrix mapping MNI152 points to subject
    points (used to place anatomy-specific abnormalities).
    """

    probs: np.ndarray
    texture: np.ndarray
    t1: np.ndarray
    affine: np.ndarray
    mni_to_subject: np.ndarray
    t1_means: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.t1.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))

    def brain_mask(self, thr: float = 0.5) -> np.ndarray:
        return (self.probs[GM] + self.probs[WM]) >= thr

    def intracranial_mask(self, thr: float = 0.5) -> np.ndarray:
        """GM + WM + CSF >= ``thr``, holes filled (at 1 mm, vessel and partial-volume
        voxels inside the brain would otherwise make holes that break depth maps)."""
        return np.asarray(ndi.binary_fill_holes(
            (self.probs[GM] + self.probs[WM] + self.probs[CSF]) >= thr))


def load_head() -> nib.Nifti1Image:
    """The real head T1 as NIfTI (voxel -> world RAS+ mm).

    Uses the project's DICOM converter on ``brain-t1-3d/dicoms`` when it is
    available; otherwise the dcm2niix reference conversion of the same series.
    """
    try:
        from mri_safety.dicom.series import load_series_dir
        from mri_safety.dicom.volume import convert_series
    except ImportError:
        return nib.load(str(HEAD_REF_NIFTI))  # type: ignore[return-value]
    groups = load_series_dir(HEAD_DICOM_DIR)
    if len(groups) != 1:
        raise ValueError(f"{HEAD_DICOM_DIR}: expected one series, found {len(groups)}")
    img = convert_series(groups[0]).to_nifti()
    return img


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mri-safety`` (created on demand)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    d = base / "mri-safety"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _hash_image(img: nib.Nifti1Image, voxel_mm: float) -> str:
    h = hashlib.sha256()
    h.update(_VERSION.encode())
    h.update(np.asarray(img.dataobj, dtype=np.float32).tobytes())
    h.update(np.round(img.affine, 6).tobytes())
    h.update(f"{voxel_mm:.4f}".encode())
    return h.hexdigest()[:20]


def get_anatomy(voxel_mm: float = 1.0, head: nib.Nifti1Image | None = None) -> Anatomy:
    """Anatomy at ``voxel_mm`` isotropic, from the cache or derived (~30 s)."""
    head = load_head() if head is None else head
    key = _hash_image(head, voxel_mm)
    path = cache_dir() / f"anatomy-{key}.npz"
    if path.exists():
        try:
            z = np.load(path)
            return Anatomy(z["probs"], z["texture"], z["t1"], z["affine"], z["mni_to_subject"],
                           z["t1_means"])
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)
    if voxel_mm != 1.0:
        base = get_anatomy(1.0, head)
        anat = downsample_anatomy(base, voxel_mm)
    else:
        anat = derive_anatomy(head, voxel_mm)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, probs=anat.probs, texture=anat.texture, t1=anat.t1, affine=anat.affine,
             mni_to_subject=anat.mni_to_subject, t1_means=anat.t1_means)
    os.replace(tmp, path)
    return anat


def downsample_anatomy(anat: Anatomy, voxel_mm: float) -> Anatomy:
    """Average-pool-like resampling of an anatomy to a coarser isotropic grid."""
    f = voxel_mm / anat.voxel_mm
    shape = tuple(int(np.floor(s / f)) for s in anat.shape)
    aff = anat.affine.copy()
    aff[:3, :3] = np.diag(np.sign(np.diag(anat.affine[:3, :3])) * voxel_mm)
    # voxel centre of new (0,0,0) = centre of the f-wide block starting at old (0,0,0)
    aff[:3, 3] = anat.affine[:3, :3] @ np.full(3, (f - 1) / 2) + anat.affine[:3, 3]
    sigma = max(f / 2.5, 0.01)

    def rs(a: np.ndarray, order: int = 1) -> np.ndarray:
        sm = ndi.gaussian_filter(a, sigma)
        coords = np.indices(shape, dtype=np.float32).reshape(3, -1) * f + (f - 1) / 2
        return ndi.map_coordinates(sm, coords, order=order, mode="nearest").reshape(shape)

    probs = np.stack([rs(p) for p in anat.probs]).astype(np.float32)
    probs = np.clip(probs, 0, None)
    probs /= np.maximum(probs.sum(0, keepdims=True), 1e-6)
    return Anatomy(probs, rs(anat.texture).astype(np.float32), rs(anat.t1).astype(np.float32),
                   aff, anat.mni_to_subject, anat.t1_means)


def _to_working_grid(head: nib.Nifti1Image, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample the head to an axis-aligned RAS grid cropped to the head (voxel -> RAS)."""
    data = np.asarray(head.dataobj, dtype=np.float32)
    img = array_to_sitk(data, head.affine)
    # Head bounding box in world RAS from the corners of a coarse head mask.
    thr = np.percentile(data[data > 0], 50) * 0.25 if np.any(data > 0) else 0.0
    idx = np.argwhere(ndi.binary_opening(data > thr, iterations=2))
    lo_v, hi_v = idx.min(0) - 3, idx.max(0) + 3
    corners = np.array([[a, b, c] for a in (lo_v[0], hi_v[0]) for b in (lo_v[1], hi_v[1])
                        for c in (lo_v[2], hi_v[2])], dtype=float)
    world = (head.affine[:3, :3] @ corners.T).T + head.affine[:3, 3]
    lo, hi = world.min(0), world.max(0)
    shape = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    aff = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = lo
    ref = array_to_sitk(np.zeros(tuple(shape), np.float32), aff)
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk_to_array(out), aff


def _register_mni(t1: np.ndarray, aff: np.ndarray, crude_brain: np.ndarray) -> sitk.Transform:
    """Affine fit of MNI152 to the head: maps MNI template points to subject points
    (LPS mm; ITK convention, fixed -> moving).

    The 2 mm MNI152 template is the FIXED image, its brain mask dilated by 8 mm
    the metric mask, so the brain, its edge and the CSF and skull just around it
    drive the fit; the whole head T1 (smoothed by 1 mm) moves. Moments of the
    template brain mask and of the crude subject brain give the start. Until v4
    the subject was fixed and masked by its crude brain, and the fit came out
    pitched by ~15 mm over the convexity (NCC of the warped template with the
    head 0.28; now 0.56, 0.5 mm mean / 1.3 mm max over the MNI brain from the
    independent fit of :mod:`mri_safety.preprocess.masks`, docs/synth.md). Runs on one ITK
    thread, the preparing filters too (see ``_VERSION`` and
    :func:`~mri_safety.synth.sitkutil.mattes_register`)."""
    with itk_threads(1):
        from nilearn import datasets

        mni = datasets.load_mni152_template(resolution=1)
        mni_brain = datasets.load_mni152_brain_mask(resolution=1)
        fixed = sitk.BinShrink(array_to_sitk(np.asarray(mni.get_fdata(), np.float32),
                                             mni.affine), [2] * 3)
        brain = sitk.BinShrink(array_to_sitk(
            (np.asarray(mni_brain.get_fdata()) > 0.5).astype(np.float32), mni_brain.affine),
            [2] * 3) > 0.5
        metric_mask = sitk.BinaryDilate(sitk.Cast(brain, sitk.sitkUInt8), [4] * 3)
        moving = sitk.SmoothingRecursiveGaussian(array_to_sitk(t1, aff), 1.0)
        init = sitk.CenteredTransformInitializer(
            sitk.Cast(brain, sitk.sitkFloat32), array_to_sitk(crude_brain.astype(np.float32), aff),
            sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS)
        return mattes_register(fixed, moving, metric_mask, init, sampling=0.3, min_step=1e-4,
                               iterations=300, sigmas=(2.0, 0.0))


def _crude_brain(t1: np.ndarray, vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Head mask and a rough brain mask (morphology on thresholds), voxel arrays."""
    sm = ndi.gaussian_filter(t1, 1.0 / vox)
    fg = sm[sm > np.percentile(sm, 60)]
    thr = float(np.percentile(fg, 10)) * 0.3
    head = sm > thr
    lab, n = ndi.label(head)
    if n > 1:
        sizes = ndi.sum(head, lab, range(1, n + 1))
        head = lab == (1 + int(np.argmax(sizes)))
    head = ndi.binary_fill_holes(ndi.binary_closing(head, iterations=int(round(4 / vox))))
    for ax in range(3):  # fill slice-wise too (defaced head leaves open holes)
        for i in range(head.shape[ax]):
            sl = [slice(None)] * 3
            sl[ax] = slice(i, i + 1)
            head[tuple(sl)] = ndi.binary_fill_holes(head[tuple(sl)])
    inner = ndi.binary_erosion(head, iterations=int(round(6 / vox)))
    vals = sm[inner]
    wm_like = float(np.percentile(vals, 80))
    tissue = inner & (sm > 0.55 * wm_like) & (sm < 1.35 * wm_like)
    tissue = ndi.binary_opening(tissue, iterations=int(round(3 / vox)))
    lab, n = ndi.label(tissue)
    if n > 1:
        sizes = ndi.sum(tissue, lab, range(1, n + 1))
        tissue = lab == (1 + int(np.argmax(sizes)))
    brain = ndi.binary_fill_holes(ndi.binary_closing(tissue, iterations=int(round(4 / vox))))
    return head, brain


def _warp_mni_map(name: str, tx: sitk.Transform, aff: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    from nilearn import datasets

    fn = {
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "brain": datasets.load_mni152_brain_mask,
        "t1": datasets.load_mni152_template,
    }[name]
    im = fn(resolution=1)
    mov = array_to_sitk(np.asarray(im.get_fdata(), np.float32), im.affine)
    ref = array_to_sitk(np.zeros(shape, np.float32), aff)
    out = sitk.Resample(mov, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk_to_array(out)


def derive_anatomy(head: nib.Nifti1Image, voxel_mm: float = 1.0) -> Anatomy:
    """Tissue fractions, texture and MNI mapping from a real head T1 (deterministic)."""
    t1, aff = _to_working_grid(head, voxel_mm)
    headmask, crude = _crude_brain(t1, voxel_mm)
    template_to_subject = _register_mni(t1, aff, crude)
    tx = template_to_subject.GetInverse()  # subject -> template points, for resampling
    shape = t1.shape
    p_gm = np.clip(_warp_mni_map("gm", tx, aff, shape), 0, 1)
    p_wm = np.clip(_warp_mni_map("wm", tx, aff, shape), 0, 1)
    p_brain = np.clip(_warp_mni_map("brain", tx, aff, shape), 0, 1)
    # Intracranial prior: the brain mask dilated a little (CSF around the brain).
    icv = ndi.gaussian_filter(
        ndi.binary_dilation(p_brain > 0.5, iterations=int(round(2 / voxel_mm))).astype(np.float32),
        1.0 / voxel_mm) * headmask
    p_csf = np.clip(icv - p_gm - p_wm, 0.0, 1.0)
    # Prior-weighted 3-class Gaussian mixture inside the intracranial region (EM).
    sel = icv > 0.05
    x = t1[sel].astype(np.float64)
    pri = np.stack([p_csf[sel], p_gm[sel], p_wm[sel]]) + 1e-3
    pri /= pri.sum(0)
    mu = np.array([(pri[k] * x).sum() / pri[k].sum() for k in range(3)])
    sd = np.array([np.sqrt((pri[k] * (x - mu[k]) ** 2).sum() / pri[k].sum()) for k in range(3)])
    post = pri
    for _ in range(15):
        lik = np.exp(-0.5 * ((x[None] - mu[:, None]) / sd[:, None]) ** 2) / sd[:, None]
        post = pri * lik + 1e-12
        post /= post.sum(0)
        w = post.sum(1)
        mu = (post * x).sum(1) / w
        sd = np.sqrt((post * (x - mu[:, None]) ** 2).sum(1) / w) + 1e-3
        order = np.argsort(mu)  # keep CSF < GM < WM on T1
        mu, sd, post = mu[order], sd[order], post[order]
    probs = np.zeros((len(CLASSES), *shape), np.float32)
    icv_s = icv[sel]
    for k, c in enumerate((CSF, GM, WM)):
        probs[c][sel] = post[k] * icv_s
    # Extracranial head tissue by T1 intensity: dark = skull/air, mid = scalp/muscle, bright = fat.
    extra = headmask.astype(np.float32) * (1.0 - np.clip(icv, 0, 1))
    wm_mu = float(mu[2])
    r = t1 / wm_mu
    p_fat = np.clip((r - 0.9) / 0.3, 0, 1)
    p_skull = np.clip((0.45 - r) / 0.25, 0, 1)
    p_scalp = np.clip(1 - p_fat - p_skull, 0, 1)
    probs[FAT] = extra * p_fat
    probs[SKULL] = extra * p_skull
    probs[SCALP] = extra * p_scalp
    # Vessels: very bright voxels inside the intracranial region (flow/enhancement on T1).
    ves = (icv > 0.5) & (r > 1.35)
    ves_f = ves.astype(np.float32) * icv
    for c in (CSF, GM, WM):
        probs[c] *= 1 - ves.astype(np.float32)
    probs[VESSEL] = ves_f
    probs[BG] = np.clip(1 - probs[1:].sum(0), 0, 1)
    probs /= np.maximum(probs.sum(0, keepdims=True), 1e-6)
    # Texture: real T1 / the T1 predicted from tissue fractions and class means.
    t1n = (t1 / wm_mu).astype(np.float32)
    means = np.array([0.0, mu[0] / wm_mu, mu[1] / wm_mu, 1.0, 0.3, 0.7, 1.1, 1.5], np.float32)
    pred = np.tensordot(means, probs, axes=1)
    tex = np.where(pred > 0.1, t1n / np.maximum(pred, 1e-3), 1.0)
    tex = np.clip(tex, 0.5, 1.6).astype(np.float32)
    return Anatomy(probs.astype(np.float32), tex, t1n, aff,
                   np.linalg.inv(subject_to_mni_ras(template_to_subject)), means)
