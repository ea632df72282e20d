"""Orientation is right for every patient position (real data, no reference files).

The same head was scanned supine (HFS), prone (HFP) and lying on the left and
right side (HFDL, HFDR). DICOM's LPS patient coordinates follow the patient,
so after conversion the four heads must nearly coincide in world space: a
rigid registration of each to HFS needs only a small rotation (the head's real
repositioning) and reaches a high similarity. A copy whose data are flipped
along ``i`` without changing the affine (the typical conversion bug) must fail
the same check.

Measured on this data (Mattes MI, ~2 mm, seed 42): rotation to HFS HFP 6.3,
HFDL 11.7, HFDR 20.6 degrees (HFDR really is rolled ~20 degrees: stable across
seeds and identical on the dcm2niix reference conversions); head-masked NCC
0.75 / 0.88 / 0.88. Flipped copies: head NCC 0.08-0.09. Bars: angle < 30
degrees (a flip along i or j would need ~180 degrees to undo) and head NCC >
0.6. A left-right mirror (along k for these sagittal slabs) is *not* caught
this way because heads are nearly symmetric (measured head NCC 0.65-0.79);
the dcm2niix reference tests guard that axis.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import need_data

from mri_safety.dicom.series import load_series_dir
from mri_safety.dicom.volume import Volume, convert_series

ANGLE_BAR_DEG = 30.0
NCC_HEAD_BAR = 0.6
SEED = 42
POSITIONS = ("HFP", "HFDL", "HFDR")


def to_sitk(data: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """(i, j, k) array + voxel->RAS affine -> SimpleITK image (ITK is LPS)."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine_ras[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.T, dtype=np.float32))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:, 3]])
    img.SetDirection([float(d) for d in (lps[:, :3] / spacing).ravel()])
    return img


def downsample(img: sitk.Image, target_mm: float = 2.0) -> sitk.Image:
    factors = [max(1, round(target_mm / s)) for s in img.GetSpacing()]
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(img, target_mm / 2), factors)


def register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200, 0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY,
    )
    reg.SetInitialTransform(init, inPlace=False)
    out = reg.Execute(fixed, moving)
    if isinstance(out, sitk.CompositeTransform) or out.GetName() == "CompositeTransform":
        out = sitk.CompositeTransform(out).GetNthTransform(0)
    return sitk.Euler3DTransform(out)


def rotation_deg(tx: sitk.Euler3DTransform) -> float:
    rot = np.asarray(tx.GetMatrix()).reshape(3, 3)
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))


def ncc_in_overlap(fixed: sitk.Image, moving: sitk.Image,
                   tx: sitk.Transform) -> tuple[float, float]:
    """NCC over the field-of-view overlap, and over overlap voxels that are head
    in either image (> 10 % of the fixed 99th percentile)."""
    res = sitk.Resample(moving, fixed, tx, sitk.sitkLinear, float("nan"))
    a = sitk.GetArrayFromImage(fixed).astype(np.float64)
    b = sitk.GetArrayFromImage(res).astype(np.float64)
    overlap = np.isfinite(b)
    thr = 0.1 * np.percentile(a[overlap], 99)
    head = overlap & ((a > thr) | (b > thr))

    def ncc(mask: np.ndarray) -> float:
        x = a[mask] - a[mask].mean()
        y = b[mask] - b[mask].mean()
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    return ncc(overlap), ncc(head)


@pytest.fixture(scope="module")
def volumes() -> dict[str, Volume]:
    root = need_data("dicom", "patient-positions")
    out = {}
    for pos in ("HFS", *POSITIONS):
        groups = load_series_dir(root / pos)
        assert len(groups) == 1
        out[pos] = convert_series(groups[0])
    return out


@pytest.fixture(scope="module", autouse=True)
def one_itk_thread() -> Iterator[None]:
    """Mattes MI with random sampling is only reproducible single-threaded."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


@pytest.fixture(scope="module")
def fixed(volumes: dict[str, Volume]) -> sitk.Image:
    v = volumes["HFS"]
    return downsample(to_sitk(v.scaled(), v.affine))


def _check(fixed: sitk.Image, data: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    moving = downsample(to_sitk(data, affine))
    tx = register(fixed, moving)
    ncc_all, ncc_head = ncc_in_overlap(fixed, moving, tx)
    return rotation_deg(tx), ncc_all, ncc_head


def test_patient_position_recorded(volumes: dict[str, Volume]) -> None:
    for pos, vol in volumes.items():
        assert vol.params["PatientPosition"] == pos


@pytest.mark.parametrize("pos", POSITIONS)
def test_position_registers_rigidly_to_hfs(
    pos: str, volumes: dict[str, Volume], fixed: sitk.Image
) -> None:
    v = volumes[pos]
    angle, ncc_all, ncc_head = _check(fixed, v.scaled(), v.affine)
    print(f"{pos}: rotation {angle:.1f} deg, NCC overlap {ncc_all:.3f}, head {ncc_head:.3f}")
    assert angle < ANGLE_BAR_DEG
    assert ncc_head > NCC_HEAD_BAR


@pytest.mark.parametrize("pos", POSITIONS)
def test_flipped_copy_fails_the_same_check(
    pos: str, volumes: dict[str, Volume], fixed: sitk.Image
) -> None:
    v = volumes[pos]
    flipped = v.scaled()[::-1]  # data flipped along i, affine unchanged
    angle, ncc_all, ncc_head = _check(fixed, flipped, v.affine)
    print(f"{pos} flipped: rotation {angle:.1f} deg, NCC overlap {ncc_all:.3f}, "
          f"head {ncc_head:.3f}")
    assert angle >= ANGLE_BAR_DEG or ncc_head <= NCC_HEAD_BAR
