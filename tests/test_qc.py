"""QC: MRIQC-style metrics on phantoms with known truth and on real data,
protocol conformance against baseline, verdict, configuration."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import need_data

from mri_safety.dicom.series import load_series_dir
from mri_safety.dicom.volume import Volume, convert_series
from mri_safety.qc import assess_image, compare_protocol, load_qc_config, qc_verdict
from mri_safety.qc import metrics as m
from mri_safety.qc.assess import head_mask, kmeans_tissues
from mri_safety.qc.config import QCConfigError

# --------------------------------------------------------------------------- phantoms

N = 64
SIGMA = 10.0
MU_WM, MU_GM = 200.0, 120.0


def _phantom(sigma: float = SIGMA, seed: int = 0, ghost: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-class sphere (WM core, GM shell) in air; complex Gaussian noise of
    known sigma -> magnitude (Rician; Rayleigh in air). Returns image, head,
    WM, GM masks (noise-free truth)."""
    ijk = np.indices((N, N, N)) - (N - 1) / 2.0
    r = np.sqrt((ijk**2).sum(0))
    head = r < 16
    wm = r < 9
    gm = head & ~wm
    clean = np.where(wm, MU_WM, np.where(gm, MU_GM, 0.0))
    if ghost:
        clean = clean + ghost * np.roll(clean, N // 2, axis=0)
    rng = np.random.default_rng(seed)
    img = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return img, head, wm, gm


def test_metrics_match_definitions_on_rician_phantom() -> None:
    img, head, wm, gm = _phantom()
    q = assess_image(img, (1.0, 1.0, 1.0), head=head, tissues=(wm, gm),
                     phase_encoding_direction="i")
    assert q.air_applicable, q.air_reason
    v = q.as_dict()
    # truth: SNR = mu / sigma (Rician ~ Gaussian at SNR 20), air std = sigma sqrt((4-pi)/2)
    assert v["snr"] == pytest.approx(MU_WM / SIGMA, rel=0.03)
    assert v["snr_dietrich"] == pytest.approx(MU_WM / SIGMA, rel=0.03)
    sd_air = SIGMA * math.sqrt((4 - math.pi) / 2)
    assert v["cnr"] == pytest.approx((MU_WM - MU_GM) / math.sqrt(2 * SIGMA**2 + sd_air**2),
                                     rel=0.03)
    assert v["cjv"] == pytest.approx(2 * SIGMA / (MU_WM - MU_GM), rel=0.03)
    # FBER: median |x|^2 in head vs air; air energy of a Rayleigh = exponential, median 2 s^2 ln 2
    fg_energy = float(np.median(np.where(wm, MU_WM, MU_GM)[head] ** 2))  # noise-free median
    assert v["fber"] == pytest.approx((fg_energy + 2 * SIGMA**2) / (2 * SIGMA**2 * math.log(2)),
                                      rel=0.05)
    assert v["gsr"] is not None and abs(v["gsr"]) < 0.01  # no ghost
    # Immerkaer noise estimate (no air needed): the WM core is flat, so sigma is exact-ish
    assert m.immerkaer_sigma(img, wm, 2) == pytest.approx(SIGMA, rel=0.05)
    assert 0 < v["efc"] < 1


def test_snr_and_cnr_follow_the_noise_level() -> None:
    for sigma in (5.0, 20.0):
        img, head, wm, gm = _phantom(sigma, seed=1)
        v = assess_image(img, (1.0, 1.0, 1.0), head=head, tissues=(wm, gm)).as_dict()
        assert v["snr_dietrich"] == pytest.approx(MU_WM / sigma, rel=0.04)
        assert v["cjv"] == pytest.approx(2 * sigma / (MU_WM - MU_GM), rel=0.04)
        assert v["snr_local"] == pytest.approx(MU_WM / sigma, rel=0.15)  # sphere edges add a bit


def test_efc_limits_and_gsr_sees_a_ghost() -> None:
    one = np.zeros(1000)
    one[3] = 5.0
    assert m.efc(one) == pytest.approx(0.0, abs=1e-9)       # all energy in one voxel
    assert m.efc(np.full(1000, 7.0)) == pytest.approx(1.0)  # energy spread evenly
    img, head, wm, gm = _phantom(sigma=2.0, ghost=0.10)
    g_pe = assess_image(img, (1.0,) * 3, head=head, tissues=(wm, gm),
                        phase_encoding_direction="i").as_dict()["gsr"]
    g_other = assess_image(img, (1.0,) * 3, head=head, tissues=(wm, gm),
                           phase_encoding_direction="j").as_dict()["gsr"]
    assert g_pe is not None and g_other is not None
    assert g_pe > 0.05 and abs(g_other) < 0.01
    q = assess_image(img, (1.0,) * 3, head=head, tissues=(wm, gm))
    assert q.values["gsr"].value is None and "phase-encoding" in q.values["gsr"].reason


def test_fov_coverage() -> None:
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[5:15, 5:15, 5:15] = True
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    moved = aff.copy()
    moved[2, 3] = 20.0  # follow-up FOV starts 20 mm (10 voxels) higher
    fov = m.fov_mask(mask.shape, aff, (20, 20, 20), moved)
    assert fov[:, :, 10:].all() and not fov[:, :, :10].any()
    assert m.fov_coverage(mask, fov) == pytest.approx(0.5)
    img, head, wm, gm = _phantom()
    top = np.zeros(img.shape, dtype=bool)
    top[:, :, N // 2:] = True  # follow-up FOV covers the upper half
    v = assess_image(img, (1.0,) * 3, head=head, tissues=(wm, gm), baseline_mask=head,
                     followup_fov=top).as_dict()
    assert v["fov_coverage"] == pytest.approx(0.5, abs=0.01)


def test_zero_filled_background_is_not_air() -> None:
    from scipy import ndimage as ndi

    img, head, wm, gm = _phantom()
    full = assess_image(img, (1.0,) * 3, head=head, tissues=(wm, gm))
    # defaced/padded: the lower half of the volume zero-filled outside the head
    half = img.copy()
    low = np.zeros(img.shape, dtype=bool)
    low[:, :, : N // 2] = True
    half[low & ~head] = 0.0
    q = assess_image(half, (1.0,) * 3, head=head, tissues=(wm, gm))
    assert q.air_applicable and q.n_air < full.n_air / 2
    assert q.as_dict()["snr_dietrich"] == pytest.approx(MU_WM / SIGMA, rel=0.05)  # zeros excluded
    # masked background (skull-stripped style): only a 3-voxel rim of real air remains
    rim = img.copy()
    rim[~ndi.binary_dilation(head, iterations=3)] = 0.0
    q = assess_image(rim, (1.0,) * 3, head=head, tissues=(wm, gm))
    assert not q.air_applicable
    assert q.values["snr_dietrich"].value is None and q.values["fber"].value is None


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def hfs_volume() -> Volume:
    """Real 2D sagittal T1 (patient-positions HFS) through the project's converter."""
    return convert_series(load_series_dir(need_data("dicom", "patient-positions", "HFS"))[0])


@pytest.fixture(scope="module")
def hfs(hfs_volume: Volume) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    z = tuple(float(x) for x in hfs_volume.to_nifti().header.get_zooms()[:3])
    return hfs_volume.scaled().astype(np.float64), (z[0], z[1], z[2]), hfs_volume.params


def _rician(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))


def test_noise_degraded_real_image_ranks_below_original(
        hfs: tuple[np.ndarray, tuple[float, float, float], dict]) -> None:
    img, z, params = hfs
    pe = params.get("PhaseEncodingDirection")
    orig = assess_image(img, z, phase_encoding_direction=pe)
    wm, _ = kmeans_tissues(img, head_mask(img), 3, 0)  # noise level relative to WM
    noisy = _rician(img, 0.2 * float(img[wm].mean()), seed=3)
    deg = assess_image(noisy, z, phase_encoding_direction=pe)
    a, b = orig.as_dict(), deg.as_dict()
    assert orig.air_applicable  # real head in air
    assert b["snr"] < a["snr"] and b["cnr"] < a["cnr"]
    assert b["cjv"] > a["cjv"] and b["efc"] > a["efc"]
    assert b["snr_local"] < a["snr_local"] / 5
    assert qc_verdict(a).status == "usable"
    assert qc_verdict(a, baseline=a).status == "usable"
    heavy = assess_image(_rician(img, 0.5 * float(img[wm].mean()), seed=4), z,
                         phase_encoding_direction=pe).as_dict()
    v = qc_verdict(heavy, baseline=a)
    assert v.status == "unusable" and not v.assessable, v
    assert qc_verdict(heavy).status == "unusable"  # also without a baseline
    assert qc_verdict(b).status == "review"


def test_spine_crop_has_no_air_background() -> None:
    p = need_data("spine", "t2", "t2.nii.gz")
    im = nib.load(p)
    q = assess_image(np.asarray(im.dataobj, dtype=np.float64),
                     tuple(float(x) for x in im.header.get_zooms()[:3]))  # type: ignore[arg-type]
    assert not q.air_applicable
    for k in ("snr_dietrich", "fber", "gsr"):
        assert q.values[k].value is None
        assert q.values[k].reason.startswith("not applicable"), q.values[k].reason
    assert "fills the field of view" in q.air_reason
    assert q.values["snr"].value is not None and q.values["cjv"].value is not None


# --------------------------------------------------------------------------- protocol


def test_protocol_matches_itself_and_flags_synthetic_deviations(hfs_volume: Volume) -> None:
    base, aff = hfs_volume.params, hfs_volume.affine
    same = compare_protocol(base, base, baseline_affine=aff, followup_affine=aff)
    assert same.deviations == [] and same.confidence == 1.0

    fu = dict(base)
    fu["SliceThickness"] = 1.0
    fu["SpacingBetweenSlices"] = 1.0
    fu["EchoTime"] = base["EchoTime"] * 2
    fu["SoftwareVersions"] = "syngo MR XA30"
    fu["ImageType"] = ["ORIGINAL", "PRIMARY", "M", "ND"]
    fu["ContrastBolusAgentPresent"] = True
    fu_aff = aff.copy()
    fu_aff[:3, 2] *= 1.0 / 4.8  # slices now 1 mm apart
    r = compare_protocol(base, fu, baseline_affine=aff, followup_affine=fu_aff)
    d = r.by_field()
    assert d["SliceThickness"].baseline == 4.0 and d["SliceThickness"].followup == 1.0
    assert d["SliceThickness"].severity == "major"
    assert d["EchoTime"].baseline == pytest.approx(2.46) and d["EchoTime"].unit == "ms"
    assert d["VoxelSize"].severity == "major"
    assert d["SoftwareVersions"].severity == "info"
    dc = d["DistortionCorrection"]
    assert (dc.baseline, dc.followup, dc.severity) == ("DIS2D", "ND", "major")
    assert d["ContrastAgent"].severity == "major"
    assert "Orientation" not in d and "MagneticFieldStrength" not in d
    assert r.worst == "major" and r.confidence < 0.3

    # orientation from the affine: an axial stack against the sagittal baseline
    ax_aff = np.diag([1.0156, 1.0156, 4.8, 1.0])
    o = compare_protocol(base, base, baseline_affine=aff, followup_affine=ax_aff).by_field()
    assert (o["Orientation"].baseline, o["Orientation"].followup) == ("sagittal", "axial")
    # small TR change: minor; field strength: major; field missing on one side: info
    fu2 = dict(base, RepetitionTime=base["RepetitionTime"] * 1.05, MagneticFieldStrength=1.5)
    del fu2["Manufacturer"]
    d2 = compare_protocol(base, fu2).by_field()
    assert d2["RepetitionTime"].severity == "minor"
    assert d2["MagneticFieldStrength"].severity == "major"
    assert d2["Manufacturer"].severity == "info" and d2["Manufacturer"].followup is None


# --------------------------------------------------------------------------- config


def test_default_config_loads_and_bad_keys_name_the_file(tmp_path: Path) -> None:
    cfg = load_qc_config()
    assert cfg.verdict.absolute["cnr"].higher_is_better
    bad = tmp_path / "qc.yaml"
    bad.write_text("verdict:\n  absolute:\n    snrr: {review: 1, unusable: 0.5, "
                   "higher_is_better: true}\n")
    with pytest.raises(QCConfigError, match=r"qc\.yaml.*snrr"):
        load_qc_config(bad)
    bad.write_text("metrics:\n  air_margin_mm: -1\n")
    with pytest.raises(QCConfigError, match="air_margin_mm"):
        load_qc_config(bad)


def test_efc_from_sums_of_pieces_equals_efc_of_the_whole() -> None:
    """The QC stage sums EFC's terms slab by slab (no whole-image float64 copy):
    the value must be the one of the definition on all voxels outside the frame."""
    from mri_safety.qc.assess import _efc_sums, zero_fill_mask

    img, _, _, _ = _phantom(sigma=3.0, ghost=0.05)
    img = np.abs(img)
    img[:, :, :4] = 0.0  # zero-filled frame, left out
    frame = zero_fill_mask(img)
    whole = m.efc(img[~frame])
    assert m.efc_from_sums(*_efc_sums(img, frame, slab=5)) == pytest.approx(whole, rel=1e-12)
    # by the definition, written out directly
    x = img[~frame].ravel()
    r = x / np.sqrt((x ** 2).sum())
    n = x.size
    e = -(r[r > 0] * np.log(r[r > 0])).sum()
    assert whole == pytest.approx(e / (-n / np.sqrt(n) * np.log(1 / np.sqrt(n))), rel=1e-12)


def test_blank_image_is_named_as_such() -> None:
    """A series of zeros (a failed reconstruction) is reported as having no signal,
    not as a k-means failure deep inside the metrics."""
    with pytest.raises(ValueError, match="no signal"):
        assess_image(np.zeros((20, 20, 10)), (1.0, 1.0, 1.0))


def test_masked_background_is_not_air_even_beside_dim_tissue() -> None:
    """Real 1.5 T FLAIR exported with its background zeroed beyond ~20 mm of the
    head (longitudinal-ms patient03 baseline): Otsu splits the head itself, so the
    head mask misses the scalp and vertex. The band left between them and the zeros
    is not air: before 2026-12-06 it was taken as air, Dietrich SNR read 4.5 and the
    series was "unusable" although its tissue SNR is ~40 and experts read it."""
    p = need_data("longitudinal-ms", "patient03", "study1_FLAIR.nii.gz")
    from mri_safety.qc import assess_nifti

    q = assess_nifti(nib.load(str(p)))
    d = q.as_dict()
    assert not q.air_applicable and d["snr_dietrich"] is None
    assert d["snr_local"] > 20
    assert qc_verdict(d).status == "usable"
