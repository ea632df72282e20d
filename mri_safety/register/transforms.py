"""Image and transform conventions for the preprocessing and registration stages.

Convention used by :mod:`mri_safety.preprocess` and :mod:`mri_safety.register`:
functions take and return **SimpleITK images**. A SimpleITK image carries its
geometry (origin, spacing, direction) in **LPS+ world mm** (DICOM patient
coordinates), whereas a NIfTI affine maps voxel indices to **RAS+ world mm**.
:func:`nib_to_sitk` and :func:`sitk_to_nib` convert between the two without
losing geometry (the only change is the sign of the first two world axes and
the array axis order: nibabel arrays are indexed ``[i, j, k]``, SimpleITK's
``GetArrayFromImage`` returns ``[k, j, i]``).

Transforms follow the ITK convention: a registration transform ``T`` maps
points of the **fixed** image space to the **moving** image space (LPS mm), so
``sitk.Resample(moving, fixed, T)`` brings the moving image onto the fixed
grid. They are written as ITK ``.tfm`` text files readable by SimpleITK
(``sitk.ReadTransform``) and ANTs (``ants.read_transform``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nib_to_sitk(img: nib.spatialimages.SpatialImage, dtype: type | None = None) -> sitk.Image:
    """Convert a 3D nibabel image (RAS+ affine) to a SimpleITK image (LPS+ geometry).

    Scaling (``scl_slope``/``scl_inter``) is applied. ``dtype`` forces the numpy
    dtype of the voxel data (default: float32 when scaled, else the on-disk type).
    Raises ``ValueError`` for non-3D data or affines with shear, which SimpleITK
    cannot represent.
    """
    if len(img.shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {img.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    lps = LPS_FROM_RAS @ affine
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine has shear (non-orthogonal voxel axes); "
                         "cannot convert to SimpleITK")
    if dtype is None:
        slope = getattr(img.dataobj, "slope", 1.0)
        inter = getattr(img.dataobj, "inter", 0.0)
        if slope in (1.0, None) and inter in (0.0, None):
            data = np.asarray(img.dataobj)
        else:
            data = img.get_fdata(dtype=np.float32)
    else:
        data = np.asarray(img.get_fdata(dtype=np.float64)).astype(dtype)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(v) for v in direction.ravel()])
    out.SetOrigin([float(v) for v in lps[:3, 3]])
    return out


def sitk_affine_ras(img: sitk.Image) -> NDArray[np.float64]:
    """Return the 4x4 voxel -> world RAS+ mm affine of a 3D SimpleITK image."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    s = np.asarray(img.GetSpacing(), dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = d * s
    aff[:3, 3] = img.GetOrigin()
    return LPS_FROM_RAS @ aff


def sitk_to_nib(img: sitk.Image) -> nib.Nifti1Image:
    """Convert a 3D SimpleITK image (LPS+) to a nibabel NIfTI-1 image (RAS+ affine)."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a scalar 3D SimpleITK image")
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    aff = sitk_affine_ras(img)
    out = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    out.set_qform(aff, code=1)
    out.set_sform(aff, code=1)
    return out


def load_image(path: str | Path, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """Read a NIfTI (or any ITK-readable) file as a SimpleITK image of ``pixel_type``.

    Raises ``ValueError`` naming the file when it cannot be read or is not 3D.
    """
    p = Path(path)
    try:
        img = sitk.ReadImage(str(p), pixel_type)
    except RuntimeError as e:
        raise ValueError(f"{p}: cannot read image ({e})") from e
    if img.GetDimension() != 3:
        raise ValueError(f"{p}: expected a 3D image, got {img.GetDimension()}D")
    return img


def affine_matrix(t: sitk.Transform) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Return ``(A, b)`` with ``T(x) = A x + b`` (LPS mm) for a linear transform.

    Works for Euler3D, Versor, Similarity, Affine and composites of them
    (evaluated numerically from the image of four points, so any transform that
    is exactly affine is handled).
    """
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    img = np.array([t.TransformPoint([float(v) for v in p]) for p in pts])
    b = img[0]
    a = (img[1:] - b).T
    return a, b


def sitk_to_ras_matrix(t: sitk.Transform) -> NDArray[np.float64]:
    """An affine-exact ITK transform (LPS points -> LPS points) as a 4 x 4 RAS+ mm
    point mapping (the inverse of :func:`mri_safety.synth.sitkutil.ras_matrix_to_sitk`)."""
    a, b = affine_matrix(t)
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = a, b
    return np.asarray(LPS_FROM_RAS @ lps @ LPS_FROM_RAS, np.float64)


def subject_to_mni_ras(template_to_subject: sitk.Transform) -> NDArray[np.float64]:
    """4 x 4 matrix from subject world RAS mm to MNI RAS mm, given the template fit
    (an affine-exact ITK transform from template points to subject points, LPS mm,
    as :attr:`mri_safety.preprocess.masks.BrainMasks.template_to_subject`).

    Used for the anatomical region of candidates (:mod:`mri_safety.change.region`)
    and for the synthetic anatomy's MNI mapping (:mod:`mri_safety.synth.anatomy`)."""
    a, b = affine_matrix(template_to_subject)
    m_lps = np.eye(4)
    m_lps[:3, :3], m_lps[:3, 3] = a, b
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.asarray(np.linalg.inv(flip @ m_lps @ flip), np.float64)


def to_affine_transform(t: sitk.Transform) -> sitk.AffineTransform:
    """Collapse any affine-exact transform (e.g. a composite) into one AffineTransform."""
    a, b = affine_matrix(t)
    out = sitk.AffineTransform(3)
    out.SetMatrix([float(v) for v in a.ravel()])
    out.SetTranslation([float(v) for v in b])
    return out


def rigid_from_matrix(rot: NDArray[np.float64], trans: NDArray[np.float64],
                      center: NDArray[np.float64] | None = None) -> sitk.Euler3DTransform:
    """Build an Euler3DTransform from ``x -> R x + t`` (LPS mm), re-centred at ``center``."""
    e = sitk.Euler3DTransform()
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    e.SetCenter([float(v) for v in c])
    e.SetMatrix([float(v) for v in np.asarray(rot).ravel()], 1e-5)
    # T(x) = R (x - c) + c + t'  ==  R x + trans   =>  t' = trans - c + R c
    e.SetTranslation([float(v) for v in (trans - c + np.asarray(rot) @ c)])
    return e


def write_transform(t: sitk.Transform, path: str | Path) -> Path:
    """Write ``t`` as an ITK text transform (``.tfm``/``.txt``; ``.mat`` gives ITK binary).

    Composite transforms are collapsed into one AffineTransform first so that
    ANTs (``ants.read_transform``) can read the file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out = t
    if isinstance(t, sitk.CompositeTransform) or t.GetName() == "CompositeTransform":
        out = to_affine_transform(t)
    sitk.WriteTransform(out, str(p))
    return p


def read_transform(path: str | Path) -> sitk.Transform:
    """Read an ITK transform file; raises ``ValueError`` naming the file on failure.

    The result is downcast to its concrete class (e.g. Euler3DTransform) when possible.
    """
    p = Path(path)
    try:
        t = sitk.ReadTransform(str(p))
    except RuntimeError as e:
        raise ValueError(f"{p}: cannot read transform ({e})") from e
    try:
        return t.Downcast()
    except Exception:  # noqa: BLE001 - Downcast is best effort
        return t


def mask_points(mask: sitk.Image, step: int = 1) -> NDArray[np.float64]:
    """World (LPS mm) coordinates of the non-zero voxels of ``mask`` (every ``step``-th)."""
    arr = sitk.GetArrayFromImage(mask)
    kji = np.argwhere(arr > 0)[::step]
    if kji.size == 0:
        return np.zeros((0, 3))
    ijk = kji[:, ::-1].astype(np.float64)
    d = np.asarray(mask.GetDirection()).reshape(3, 3)
    s = np.asarray(mask.GetSpacing())
    o = np.asarray(mask.GetOrigin())
    return o + (ijk * s) @ d.T


def apply_to_points(t: sitk.Transform, pts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Apply a linear (affine-exact) transform to an ``(n, 3)`` array of LPS mm points."""
    a, b = affine_matrix(t)
    return np.asarray(pts) @ a.T + b


def displacement_mm(t1: sitk.Transform, t2: sitk.Transform,
                    pts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-point distance (mm) between ``t1(p)`` and ``t2(p)`` for linear transforms.

    With ``t1`` the estimated and ``t2`` the true transform this is the target
    registration error (TRE) at the points ``pts`` (fixed space, LPS mm).
    """
    return np.asarray(np.linalg.norm(apply_to_points(t1, pts) - apply_to_points(t2, pts), axis=1))


def map_points_ras(t: sitk.Transform, ras: NDArray[np.floating]) -> NDArray[np.float64]:
    """``t`` (LPS points -> LPS points, any ITK transform) applied to ``ras`` (N x 3,
    world RAS+ mm); returns N x 3 RAS+ mm."""
    flip = np.array([-1.0, -1.0, 1.0])
    out = [t.TransformPoint([float(v) for v in p * flip]) for p in np.asarray(ras, np.float64)]
    return np.asarray(out, np.float64).reshape(-1, 3) * flip


def invert_points_ras(t: sitk.Transform, ras: NDArray[np.floating], *, tol_mm: float = 1e-3,
                      max_iter: int = 200) -> NDArray[np.float64] | None:
    """The points ``x`` with ``t(x) = ras`` (N x 3, world RAS+ mm), or None when the
    iteration does not converge to ``tol_mm``.

    ITK has no inverse of a B-spline or composite transform, so each point is
    found by the fixed-point iteration ``x <- x - A^-1 (t(x) - y)``, with ``A``
    the least-squares linear part of ``t`` over +-10 mm around the first guess
    (the inverse of ``t``'s affine fit there): it converges when ``t`` is that
    linear part plus a smooth deformation whose gradient is small against it (a
    neck bend of a registration between two visits), and at once when ``t`` is
    affine.

    >>> e = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.2, (3.0, -2.0, 1.0))
    >>> y = map_points_ras(e, np.array([[10.0, 20.0, -5.0]]))
    >>> np.round(invert_points_ras(e, y), 6).tolist()
    [[10.0, 20.0, -5.0]]
    """
    y = np.asarray(ras, np.float64).reshape(-1, 3)
    if not len(y):
        return y
    star = 10.0 * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])
    centre = y.mean(0)
    for _ in range(2):  # around the targets, then around their first preimage
        probe = centre + star
        a = fit_affine_ras(probe, map_points_ras(t, probe))
        a_inv = np.linalg.inv(a[:3, :3])
        x = (y - a[:3, 3]) @ a_inv.T  # the affine fit's inverse: the first guess
        centre = x.mean(0)
    for _ in range(max_iter):
        r = map_points_ras(t, x) - y
        if float(np.abs(r).max(initial=0.0)) <= tol_mm:
            return x
        x = x - r @ a_inv.T
    return None


def fit_affine_ras(src: NDArray[np.floating], dst: NDArray[np.floating]) -> NDArray[np.float64]:
    """4 x 4 affine ``M`` (least squares) with ``M [src, 1] ~ [dst, 1]``; ``src`` and
    ``dst``: N x 3 corresponding points (N >= 4, not coplanar), any world frame.

    >>> m = np.array([[0.0, -1, 0, 5], [1, 0, 0, -2], [0, 0, 2, 1], [0, 0, 0, 1]])
    >>> p = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 3, 4]])
    >>> bool(np.allclose(fit_affine_ras(p, p @ m[:3, :3].T + m[:3, 3]), m))
    True
    """
    s = np.asarray(src, np.float64).reshape(-1, 3)
    h = np.hstack([s, np.ones((len(s), 1))])
    sol, *_ = np.linalg.lstsq(h, np.asarray(dst, np.float64).reshape(-1, 3), rcond=None)
    m = np.eye(4)
    m[:3, :] = sol.T
    return m
