"""Tests of mri_safety.change: candidate extraction, noise model, geometry, outputs.

Fast tests use constructed arrays / small generated images with known truth;
real-data tests (patient-positions no-change pairs, longitudinal MS) are slow.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import need_data
from scipy import ndimage as ndi
from scipy.stats import norm

from mri_safety.change.candidates import extract, hysteresis, label_map, voxel_to_ras
from mri_safety.change.compare import compare_main, detect_pair
from mri_safety.change.params import load_params
from mri_safety.change.zmap import nan_median_filter, noise_model, review_threshold


def _ball(shape: tuple[int, int, int], c: tuple[float, float, float], r: float) -> np.ndarray:
    g = np.indices(shape).astype(float)
    return ((g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2]) ** 2) <= r * r


def _centred_ellipsoid(shape: tuple[int, int, int], radii: tuple[float, float, float]
                       ) -> np.ndarray:
    """Voxels of the ellipsoid with semi-axes ``radii`` (voxels) at the array centre."""
    g = np.indices(shape).astype(float)
    d2 = sum(((g[k] - (shape[k] - 1) / 2) / radii[k]) ** 2 for k in range(3))
    return np.asarray(d2 <= 1)


#: voxel -> RAS affine of the synthetic test heads (1 mm voxels)
_AFF = np.array([[-1.0, 0, 0, 36], [0, 1.0, 0, -40], [0, 0, 1.0, -30], [0, 0, 0, 1]])


def _save_noisy(tmp: Path, images: list[tuple[str, np.ndarray]], rng: np.random.Generator
                ) -> list[Path]:
    """Each image plus Gaussian noise (SD 2, drawn from ``rng`` in the given order) saved
    as ``tmp/NAME.nii.gz`` (float32, :data:`_AFF`); returns the paths in order."""
    paths = []
    for name, img in images:
        p = tmp / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image((img + rng.normal(0, 2.0, img.shape)).astype(np.float32),
                                 _AFF), str(p))
        paths.append(p)
    return paths


def test_extract_blobs_sizes_signs_and_hysteresis() -> None:
    shape = (40, 40, 40)
    z = np.zeros(shape, np.float32)
    big = _ball(shape, (10, 10, 10), 4)          # ~268 voxels, positive
    small = _ball(shape, (30, 30, 30), 1.0)      # 7 voxels, positive (below min volume)
    neg = _ball(shape, (10, 30, 20), 3)          # negative
    weak = _ball(shape, (30, 10, 20), 3)         # above z_low but never reaches the seed
    z[big] = 8.0
    z[small] = 9.0
    z[neg] = -6.0
    z[weak] = 3.5
    # a low-z halo attached to the big blob joins it through hysteresis
    halo = _ball(shape, (10, 10, 10), 5) & ~big
    z[halo] = 3.2
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    comps = extract(z, aff, z_low=3.0, z_seed=4.0, min_volume_mm3=20.0)
    assert len(comps) == 2
    pos = [c for c in comps if c.sign > 0]
    negs = [c for c in comps if c.sign < 0]
    assert len(pos) == 1 and len(negs) == 1
    assert pos[0].volume_mm3 == pytest.approx(float((big | halo).sum()))
    assert pos[0].peak_z == pytest.approx(8.0)
    assert negs[0].peak_z == pytest.approx(-6.0)
    assert negs[0].volume_mm3 == pytest.approx(float(neg.sum()))
    assert np.allclose(pos[0].centroid_voxel, (10, 10, 10), atol=1e-6)
    # ranking: larger |peak| first
    assert abs(comps[0].peak_z) >= abs(comps[1].peak_z)
    # hysteresis alone: the weak blob is dropped, the seeded one kept
    lab, n = hysteresis(z, 3.0, 4.0)
    assert n == 2 and lab[30, 10, 20] == 0 and lab[10, 10, 10] > 0


def test_noise_model_on_pure_noise_matches_false_positive_rate() -> None:
    rng = np.random.default_rng(1)
    shape = (80, 80, 60)
    sigma = 0.05
    d = rng.normal(0, sigma, shape).astype(np.float32)
    g = np.abs(rng.normal(0, 1, shape)).astype(np.float32)
    mask = np.ones(shape, bool)
    m = noise_model(d, g, mask)
    assert m.s0 == pytest.approx(sigma, rel=0.03)
    assert m.delta_mm < 0.01  # no edge term in pure noise
    z = d / m.sd(g)
    for t in (2.0, 3.0):
        assert np.mean(z > t) == pytest.approx(norm.sf(t), rel=0.15)
    # with an edge term: variance grows with gradient as modelled
    d2 = d + rng.normal(0, 1, shape).astype(np.float32) * 0.5 * g * 0.1
    m2 = noise_model(d2, g, mask)
    assert m2.delta_mm == pytest.approx(0.05, rel=0.25)


def test_nan_median_filter_equals_scipy_generic_filter_with_nanmedian() -> None:
    """The vectorised NaN-ignoring median filter of the window noise gives the same
    float64 values as the reference it replaced (``generic_filter`` calling
    ``np.nanmedian`` per element, NaN outside): even and odd counts, ties, empty
    windows, and slabs of any size."""
    import warnings

    rng = np.random.default_rng(3)
    for t in range(12):
        shp = tuple(int(n) for n in rng.integers(1, 18, 3))
        size = [int(k) for k in rng.choice([1, 3, 5], 3)]
        x = rng.normal(size=shp) ** 2
        if t % 3 == 0:
            x = np.round(x, 1)  # ties
        x[rng.random(shp) < (0.95 if t == 5 else rng.random())] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = ndi.generic_filter(x, np.nanmedian, size=size, mode="constant", cval=np.nan)
        got = nan_median_filter(x, size, max_elements=int(rng.integers(1, 3000)))
        assert np.array_equal(ref, got, equal_nan=True), (t, shp, size)
    with pytest.raises(ValueError, match="odd"):
        nan_median_filter(np.zeros((4, 4, 4)), [2, 3, 3])


def test_review_threshold_controls_noise_clusters() -> None:
    """On smoothed pure noise, clusters flagged at z_review stay near alpha per volume."""
    rng = np.random.default_rng(7)
    shape = (96, 96, 48)
    sp = (1.0, 1.0, 2.0)
    alpha = 0.5
    thr = review_threshold(int(np.prod(shape)), sp, 1.0, alpha)
    assert 3.5 < thr < 6.0
    n_flag = 0
    for _ in range(4):
        e = ndi.gaussian_filter(rng.normal(size=shape), [1.0 / s for s in sp], mode="wrap")
        z = e / e.std()
        comps = extract(z, np.diag([*sp, 1.0]), 3.0, thr, 0.0, signs=(1,))
        n_flag += len(comps)
    assert n_flag / 4 <= alpha + 0.5


def test_centroid_world_ras_on_oblique_affine() -> None:
    rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()
    r = np.asarray(rot).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = r @ np.diag([0.8, 0.9, 3.0])
    aff[:3, 3] = (-40.0, 12.5, 7.0)
    z = np.zeros((30, 30, 12), np.float32)
    blob = _ball(z.shape, (12, 17, 5), 3)
    z[blob] = 7.0
    comps = extract(z, aff, 3.0, 4.0, 0.0)
    assert len(comps) == 1
    c = comps[0]
    cen = np.argwhere(blob).mean(axis=0)
    expect = aff[:3, :3] @ cen + aff[:3, 3]
    assert np.allclose(c.centroid_ras_mm, expect, atol=1e-4)
    assert np.allclose(voxel_to_ras(aff, np.array([0.0, 0, 0])), aff[:3, 3])
    assert c.volume_mm3 == pytest.approx(blob.sum() * 0.8 * 0.9 * 3.0, rel=1e-6)
    lab = label_map(comps, z.shape)
    assert set(np.unique(lab)) == {0, 1} and np.array_equal(lab > 0, blob)


def _synthetic_head(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Ellipsoidal 'brain' (value 100) with dark 'ventricles', inside a bright 'scalp' shell."""
    g = np.indices(shape).astype(float)
    c = [(s - 1) / 2 for s in shape]
    r = ((g[0] - c[0]) / (shape[0] * 0.36)) ** 2 + ((g[1] - c[1]) / (shape[1] * 0.40)) ** 2 \
        + ((g[2] - c[2]) / (shape[2] * 0.36)) ** 2
    img = np.zeros(shape)
    img[r <= 1.0] = 100.0
    shell = (r > 1.15) & (r <= 1.35)
    img[shell] = 120.0
    img[_centred_ellipsoid(shape, (4, 10, 5))] = 20.0
    tex = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    img = img + 8.0 * tex / tex.std() * (img > 50)
    return img


def _pair(tmp: Path, lesions: list[tuple[tuple[int, int, int], float]], seed: int = 3
          ) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    fu = head.copy()
    truth = np.zeros(shape, bool)
    for c, rad in lesions:
        b = _ball(shape, c, rad)
        fu[ndi.gaussian_filter(b.astype(float), 0.7) > 0.3] *= 1.8
        truth |= b
    bp, fp = _save_noisy(tmp, [("base", head), ("fu", fu)], rng)
    return bp, fp, truth


def test_compare_outputs_label_map_in_baseline_space_and_determinism(tmp_path: Path) -> None:
    bp, fp, truth = _pair(tmp_path, [((24, 30, 32), 3.0), ((46, 50, 28), 2.0)])
    out1, out2 = tmp_path / "a", tmp_path / "b"
    doc = compare_main(bp, fp, out1, "brain", "flair", None)
    compare_main(bp, fp, out2, "brain", "flair", None)
    assert (out1 / "candidates.json").read_bytes() == (out2 / "candidates.json").read_bytes()
    for name in ("candidates.json", "candidates.nii.gz", "zmap.nii.gz",
                 "followup_in_baseline.nii.gz"):
        assert (out1 / name).exists()
    base: Any = nib.load(str(bp))
    lab: Any = nib.load(str(out1 / "candidates.nii.gz"))
    assert lab.shape == base.shape and np.allclose(lab.affine, base.affine, atol=1e-4)
    labels = np.asarray(lab.dataobj)
    flagged = [c for c in doc["candidates"] if c["flagged"]]
    assert len(flagged) == 2, doc["candidates"]
    for c in flagged:
        assert set(c) >= {"id", "type", "flagged", "score", "volume_mm3", "centroid_ras_mm",
                          "centroid_baseline_voxel", "peak_z", "mean_z", "sign", "location",
                          "contrasts", "reasons"}
        region = labels == c["id"]
        # the candidate lies on an inserted lesion and its centroid is within 1.5 voxels of it
        tl, _ = ndi.label(truth)
        hit = np.unique(tl[region & truth])
        assert len(hit) == 1 and hit[0] > 0
        centre = np.argwhere(tl == hit[0]).mean(axis=0)
        assert np.linalg.norm(np.array(c["centroid_baseline_voxel"]) - centre) < 1.5
        ijk = np.array(c["centroid_baseline_voxel"])
        assert np.allclose(base.affine[:3, :3] @ ijk + base.affine[:3, 3], c["centroid_ras_mm"],
                           atol=0.02)
        assert c["type"] == "new_t2_hyperintensity" and c["sign"] == 1
    assert doc["registration"]["status"] in ("ok", "warn")
    assert json.loads((out1 / "candidates.json").read_text())["parameters"]["z_review"] > 3


def test_compare_bad_input_names_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(ValueError, match="nope.nii.gz"):
        compare_main(missing, missing, tmp_path / "o", "brain", "flair", None)
    with pytest.raises(ValueError, match="detection config"):
        load_params(tmp_path / "absent.yaml")
    rng = np.random.default_rng(0)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((40, 40, 20)).astype(np.float32), np.eye(4)), good)
    cases = {"blank.nii.gz": (np.zeros((40, 40, 20), np.float32), "has no signal"),
             "slice.nii.gz": (rng.random((40, 40)).astype(np.float32), "expected a 3D image"),
             # 4 voxels: no registration start overlaps it (a raw ITK traceback before)
             "tiny.nii.gz": (rng.random((4, 4, 4)).astype(np.float32),
                             "could not be compared with")}
    for name, (a, words) in cases.items():
        nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / name)
        proc = subprocess.run([sys.executable, "-m", "mri_safety.cli", "compare", str(good),
                               str(tmp_path / name), "--out", str(tmp_path / f"o-{name}")],
                              capture_output=True, text=True, timeout=300)
        text = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 1, (name, text[-1500:])
        assert name in text and words in text and "Traceback" not in text, (name, text[-1500:])


@pytest.mark.slow
def test_patient_positions_no_change_pairs() -> None:
    """Real no-change pairs (one head, four positions, 2D sagittal T1).

    Issue bar: <= 1 flagged per pair. Measured (docs/detection.md): HFS-HFP,
    HFS-HFDL, HFS-HFDR, HFP-HFDL, HFP-HFDR, HFDL-HFDR 0, 0, 0, 0, 0, 0 flagged
    (2026-12-05, T1-dark envelope of mri_safety.change.t1dark); before it
    0, 1, 0, 0, 0, 1 (2026-12-05, T1-bright rule of mri_safety.change.t1bright),
    0, 3, 0, 1, 1, 5 (2026-12-03), 0, 1, 0, 1, 1, 5 (2026-12-02) and 0, 1, 0,
    1, 2, 6 on an earlier machine and package build. Asserted with a margin of
    one candidate per pair, two in all, for builds that put one more just over
    the threshold.
    """
    from mri_safety.evaluation.pairs import load_positions_pair

    need_data("dicom", "patient-positions")
    counts = {}
    for a, b in itertools.combinations(["HFS", "HFP", "HFDL", "HFDR"], 2):
        pr = load_positions_pair(a, b)
        res = detect_pair(pr.fixed, pr.moving, contrast="t1w")
        counts[f"{a}-{b}"] = sum(1 for c in res.candidates if c["flagged"])
    print("flagged per no-change pair:", counts)
    assert all(v <= 1 for v in counts.values()), counts
    assert sum(counts.values()) <= 2, counts


@pytest.mark.slow
def test_real_ms_pairs_report() -> None:
    """Real MS follow-ups: lesion-wise figures at the review threshold (reported).

    FLAIR alone (the pipeline pools T2w too). Asserted: flagged false positives <= 3
    per pair (the issue's bar; measured 0) and a few expert lesions found (measured
    3: patient01 3 of 13, patient03 0 of 46). NOT met (see docs/detection.md): the
    issue's sensitivity bar of 0.70 (0.05 FLAIR alone, 0.10 pooled with T2w).
    """
    from mri_safety.evaluation.scoring import score_pair

    d = need_data("longitudinal-ms")
    found = 0
    for p in ("patient01", "patient03"):
        b = sitk.ReadImage(str(d / p / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
        f = sitk.ReadImage(str(d / p / "study2_FLAIR.nii.gz"), sitk.sitkFloat32)
        res = detect_pair(b, f, contrast="flair")
        grid = sitk.ReadImage(str(d / p / "brainmask_common_space.nii.gz"))
        t1 = sitk.ReadTransform(str(d / p / "study1_FLAIR_to_common_space.txt"))
        lm = np.where(np.isin(res.labels, [c["id"] for c in res.candidates if c["flagged"]]),
                      res.labels, 0).astype(np.int32)
        im = sitk.GetImageFromArray(lm.transpose(2, 1, 0))
        im.CopyInformation(b)
        lc = sitk.GetArrayFromImage(sitk.Resample(im, grid, t1, sitk.sitkNearestNeighbor, 0,
                                                  sitk.sitkInt32)).transpose(2, 1, 0)
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(d / p / "gt.nii.gz"))).transpose(2, 1, 0)
        s = score_pair(lc, gt)
        print(p, "sensitivity", s.sensitivity, "FP", s.n_false_positives)
        assert s.n_false_positives <= 3
        found += s.n_found
    assert found >= 3  # measured 3 of 59 (4 on an earlier build): far below the 0.70 bar


def test_profile_matching_degrades_the_sharper_slices() -> None:
    from mri_safety.change.resolution import match_profiles

    fixed = sitk.Image([40, 40, 10], sitk.sitkFloat32)
    fixed.SetSpacing((1.0, 1.0, 4.0))
    moving = sitk.Image([40, 40, 14], sitk.sitkFloat32)
    moving.SetSpacing((1.0, 1.0, 3.0))
    arr_m = np.zeros((14, 40, 40), np.float32)
    arr_m[7] = 1.0  # one thin slice: its profile must widen along z only
    mv = sitk.GetImageFromArray(arr_m)
    mv.CopyInformation(moving)
    f2, m2, info = match_profiles(fixed, mv, sitk.Euler3DTransform())
    assert info["effective_resolution_mm"] == [1.0, 1.0, 4.0]
    assert info["degraded"] == ["followup"]
    sd: Any = info["followup_blur_sd_mm"]
    assert sd[0] == 0 and sd[1] == 0 and sd[2] == pytest.approx(np.sqrt((16 - 9) / 12), abs=1e-3)
    out = sitk.GetArrayFromImage(m2)
    assert out[7].max() < 1.0 and out[6].max() > 0  # spread along z
    assert np.allclose(out[:, 5, :], out[:, 20, :])  # nothing in-plane
    assert np.array_equal(sitk.GetArrayFromImage(f2), sitk.GetArrayFromImage(fixed))


def test_extra_contrast_agreement_raises_evidence(tmp_path: Path) -> None:
    """A lesion seen in the extra contrast too lists it and gains evidence; a missing
    extra file is skipped with its error recorded, not fatal."""
    bp, fp, _ = _pair(tmp_path, [((24, 30, 32), 3.0)])
    (tmp_path / "x").mkdir()
    bx, fx, _ = _pair(tmp_path / "x", [((24, 30, 32), 3.0)], seed=5)
    solo = compare_main(bp, fp, tmp_path / "solo", "brain", "flair", None)
    # dwi is not pooled with flair: it adds the agreement bonus
    both = compare_main(bp, fp, tmp_path / "both", "brain", "flair",
                        [(bx, fx, "dwi"), (tmp_path / "absent.nii.gz", fx, "t1w")])
    top_solo = max(solo["candidates"], key=lambda c: c["evidence_z"])
    top_both = max(both["candidates"], key=lambda c: c["evidence_z"])
    assert top_both["contrasts"] == ["flair", "dwi"]
    assert top_both["evidence_z"] == pytest.approx(top_solo["evidence_z"] + 1.0, abs=1e-3)
    errs = [e for e in both["inputs"]["extra"] if "error" in e]
    assert len(errs) == 1 and "absent.nii.gz" in errs[0]["error"]
    # t2w is pooled into the flair z-map (no bonus on top): same place, both listed,
    # the pooling correlation recorded
    pooled = compare_main(bp, fp, tmp_path / "pooled", "brain", "flair", [(bx, fx, "t2w")])
    top_p = max(pooled["candidates"], key=lambda c: c["evidence_z"])
    assert top_p["contrasts"] == ["flair", "t2w"]
    assert top_p["centroid_baseline_voxel"] == pytest.approx(
        top_solo["centroid_baseline_voxel"], abs=0.5)
    assert any("pooled into the z-map" in r for r in top_p["reasons"])
    assert 0.0 <= pooled["parameters"]["extra_contrasts"][0]["pooled_rho"] < 1.0
    # the pipeline's route (an already registered extra pair) gives the same candidates
    from mri_safety.change.compare import detect_registered, register_pair

    prm = load_params()
    img = {k: sitk.ReadImage(str(v), sitk.sitkFloat32) for k, v in
           {"b": bp, "f": fp, "bx": bx, "fx": fx}.items()}
    reg = detect_registered(
        register_pair(img["b"], img["f"], threads=prm.registration_threads, seed=prm.seed),
        "flair", params=prm, extra_registered=[(register_pair(
            img["bx"], img["fx"], threads=prm.registration_threads, seed=prm.seed), "t2w")])
    assert [(c["id"], c["evidence_z"], c["volume_mm3"]) for c in reg.candidates] == [
        (c["id"], c["evidence_z"], c["volume_mm3"]) for c in pooled["candidates"]]


def _solo_and_with_flair(tmp: Path, contrast: str, base: np.ndarray, fu: np.ndarray,
                         flair: np.ndarray, flair_fu: np.ndarray, rng: np.random.Generator
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``contrast`` pair compared alone (``tmp/solo``) and with the FLAIR pair of the
    same visits as extra contrast (``tmp/both``), noise as :func:`_save_noisy`."""
    b, f, fb, ff = _save_noisy(tmp, [("mb", base), ("mf", fu), ("flb", flair),
                                     ("flf", flair_fu)], rng)
    return (compare_main(b, f, tmp / "solo", "brain", contrast, None),
            compare_main(b, f, tmp / "both", "brain", contrast, [(fb, ff, "flair")]))


def _candidate_on(doc: dict[str, Any], out: Path, where: np.ndarray) -> dict[str, Any]:
    """The candidate of ``doc`` (``out/candidates.json``) covering most of ``where``,
    read from ``out/candidates.nii.gz``."""
    lab: Any = nib.load(str(out / "candidates.nii.gz"))
    ids = np.asarray(lab.dataobj)[where]
    assert ids.any(), f"no candidate on the change ({out.name})"
    i = int(np.bincount(ids[ids > 0]).argmax())
    return next(c for c in doc["candidates"] if c["id"] == i)


def test_extra_contrast_of_the_other_family_agrees_with_the_opposite_sign(tmp_path: Path
                                                                         ) -> None:
    """T1w with a FLAIR extra: a new lesion is T1-dark and FLAIR-bright, so the FLAIR
    agrees with a T1w decrease when it got BRIGHTER; tissue turned CSF-like (dark on
    both) must not count as agreement. Before 2026-12-04 agreement was 'same sign' for
    every contrast pair, which gave the CSF-like change the bonus and not the lesion."""
    rng = np.random.default_rng(11)
    shape = (72, 80, 64)
    t1 = _synthetic_head(shape, rng)
    flair = _synthetic_head(shape, rng)
    lesion = ndi.gaussian_filter(_ball(shape, (24, 30, 32), 3.0).astype(float), 0.7) > 0.3
    csf_like = ndi.gaussian_filter(_ball(shape, (48, 50, 30), 3.0).astype(float), 0.7) > 0.3
    t1_fu, flair_fu = t1.copy(), flair.copy()
    t1_fu[lesion | csf_like] *= 0.55
    flair_fu[lesion] *= 1.8
    flair_fu[csf_like] *= 0.55
    solo, both = _solo_and_with_flair(tmp_path, "t1w", t1, t1_fu, flair, flair_fu, rng)

    les_s, les_b = _candidate_on(solo, tmp_path / "solo", lesion), \
        _candidate_on(both, tmp_path / "both", lesion)
    csf_s, csf_b = _candidate_on(solo, tmp_path / "solo", csf_like), \
        _candidate_on(both, tmp_path / "both", csf_like)
    assert les_b["type"] == csf_b["type"] == "t1_signal_decrease"
    assert les_b["contrasts"] == ["t1w", "flair"]
    assert les_b["evidence_z"] == pytest.approx(les_s["evidence_z"] + 1.0, abs=1e-3)
    assert csf_b["contrasts"] == ["t1w"]
    assert csf_b["evidence_z"] == pytest.approx(csf_s["evidence_z"], abs=1e-3)


def test_t1w_change_without_any_t2_change_loses_evidence(tmp_path: Path) -> None:
    """T1w with a FLAIR extra covering the brain: a T1w decrease where FLAIR did not change
    at all (|mean z| < extra_contrast_z) loses extra_contrast_bonus of evidence, with a
    reason; one where FLAIR changed, in either direction (a lesion: brighter; tissue turned
    CSF-like: darker), keeps its evidence. New tissue seen on T1w changes T2 signal too."""
    rng = np.random.default_rng(12)
    shape = (72, 80, 64)
    t1 = _synthetic_head(shape, rng)
    flair = _synthetic_head(shape, rng)
    foci = {name: ndi.gaussian_filter(_ball(shape, c, 3.0).astype(float), 0.7) > 0.3
            for name, c in (("t1_only", (24, 30, 32)), ("lesion", (48, 50, 30)),
                            ("csf_like", (36, 58, 26)))}
    t1_fu, flair_fu = t1.copy(), flair.copy()
    for m in foci.values():
        t1_fu[m] *= 0.6
    flair_fu[foci["lesion"]] *= 1.6
    flair_fu[foci["csf_like"]] *= 0.6
    solo, both = _solo_and_with_flair(tmp_path, "t1w", t1, t1_fu, flair, flair_fu, rng)

    gain = {"t1_only": -1.0, "lesion": 1.0, "csf_like": 0.0}
    for name, m in foci.items():
        s, b = _candidate_on(solo, tmp_path / "solo", m), _candidate_on(both, tmp_path / "both", m)
        assert b["evidence_z"] == pytest.approx(s["evidence_z"] + gain[name], abs=1e-3), name
        silent = [r for r in b["reasons"] if r.startswith("no change on flair")]
        assert bool(silent) == (name == "t1_only"), (name, b["reasons"])


def test_combine_z_pools_evidence_and_stays_standard_normal_under_correlation() -> None:
    """Stouffer pooling: two correlated null maps pool to SD 1 (the correlation is
    estimated, not assumed); a change at z 3.5 in two independent maps pools to
    about 4.9, above what either reaches; where the extra map is undefined the
    main z is kept."""
    from mri_safety.change.zmap import combine_z

    rng = np.random.default_rng(11)
    shape = (40, 40, 40)
    common = rng.normal(size=shape)
    rho = 0.4
    z1 = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(size=shape)
    z2 = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(size=shape)
    everywhere = np.ones(shape, bool)
    zc, r = combine_z(z1, [z2], [everywhere], everywhere)
    assert r[0] == pytest.approx(rho, abs=0.05)  # |z| < 3 truncation biases it slightly
    assert float(zc.std()) == pytest.approx(1.0, abs=0.03)
    naive = (z1 + z2) / np.sqrt(2)  # ignoring the correlation inflates the null
    assert float(naive.std()) > 1.15
    # a change seen in two independent maps
    a = rng.normal(size=shape)
    b = rng.normal(size=shape)
    a[20, 20, 20] = b[20, 20, 20] = 3.5
    defined = everywhere.copy()
    defined[:, :, :5] = False
    a[10, 10, 2] = 3.5
    zc, r = combine_z(a, [b], [defined], everywhere)
    assert abs(r[0]) < 0.05
    assert zc[20, 20, 20] == pytest.approx(7.0 / np.sqrt(2.0 + 2.0 * r[0]), rel=1e-4)
    assert zc[20, 20, 20] > 4.8 > 3.5
    assert zc[10, 10, 2] == pytest.approx(3.5)


def test_contrast_names_pd_known_unknown_refused() -> None:
    """PD pairs (the pipeline maps PD series to ``pd``) are a known, lesion-like
    contrast; an unknown contrast name is refused with the accepted list."""
    from mri_safety.change.compare import FINDINGS, LESION_LIKE, _check_contrast

    assert _check_contrast("PD") == "pd" and "pd" in LESION_LIKE
    assert FINDINGS["pd"][1] == ("new_t2_hyperintensity", True)
    with pytest.raises(ValueError, match="unknown contrast 'xyz'"):
        _check_contrast("xyz")


def test_compare_command_threads_option(tmp_path: Path) -> None:
    """`mri-safety compare --threads 1` runs registration and ITK with one thread
    (what the pipeline does with one thread per task) and records it."""
    import subprocess
    import sys

    bp, fp, _ = _pair(tmp_path, [((24, 30, 32), 3.0)])
    proc = subprocess.run([sys.executable, "-m", "mri_safety.cli", "compare", str(bp), str(fp),
                           "--out", str(tmp_path / "o"), "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "o" / "candidates.json").read_text())
    assert doc["parameters"]["registration_threads"] == 1
    assert [c["flagged"] for c in doc["candidates"]].count(True) == 1
    bad = subprocess.run([sys.executable, "-m", "mri_safety.cli", "compare", str(bp), str(fp),
                          "--out", str(tmp_path / "x"), "--threads", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "threads" in (bad.stderr + bad.stdout).lower()


def test_dark_focus_found_in_bright_grey_matter_and_needs_hypointensity(tmp_path: Path) -> None:
    """T2*w/SWI: a new dark focus (microbleed) in a thin bright grey-matter-like sheet is
    flagged as ``new_dark_focus``; a sheet segment darkening only to the surrounding tissue
    level (a strong decrease, not hypointense) is not flagged. Before the dark-focus rule
    the small-bright-structure test excluded the sheets and missed the focus."""
    rng = np.random.default_rng(11)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = head > 50
    sheets = np.zeros(shape, bool)
    for x in (22, 34, 46):  # 3-voxel sheets, 35 % brighter than the tissue (cortex on T2*w)
        sheets[x - 1:x + 2] = True
    sheets &= brain & (head < 150)
    head[sheets] *= 1.35
    fu = head.copy()
    focus = _ball(shape, (34, 28, 26), 2.5)
    fu[focus] = 15.0                                        # haemorrhage: near signal void
    fade = _ball(shape, (46, 50, 36), 3.0) & sheets
    fu[fade] = head[fade] / 1.35                            # the sheet fades to tissue level
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    doc = compare_main(paths[0], paths[1], tmp_path / "out", "brain", "t2starw", None)
    lab: Any = nib.load(str(tmp_path / "out" / "candidates.nii.gz"))
    labels = np.asarray(lab.dataobj)
    flagged = [c for c in doc["candidates"] if c["flagged"]]
    assert len(flagged) == 1, doc["candidates"]
    assert flagged[0]["type"] == "new_dark_focus" and flagged[0]["sign"] == -1
    assert np.any((labels == flagged[0]["id"]) & focus)
    z: Any = nib.load(str(tmp_path / "out" / "zmap.nii.gz"))
    assert float(np.asarray(z.dataobj)[fade].min()) < -doc["parameters"]["z_review"]
    assert not np.any(np.isin(labels[fade], [c["id"] for c in flagged]))


def test_dark_focus_is_judged_against_bright_local_tissue(tmp_path: Path) -> None:
    """T2*w: a focus darkening to 0.9 x the tissue median inside a broad region of grey
    matter 1.15 x the median is 0.78 x its surroundings: hypointense, a microbleed, and
    flagged. Against the global level (1 / 1.2 = 0.83 x the median, the rule before
    2026-12-04, ``local_reference_mm = 0``) it is not hypointense and not found."""
    import SimpleITK as sitk

    from mri_safety.change.compare import detect_registered, register_pair
    from mri_safety.change.params import load_params

    rng = np.random.default_rng(17)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = (head > 50) & (head < 150) & ~_centred_ellipsoid(shape, (5, 11, 6))
    grey = brain & (np.indices(shape)[0] >= 40)           # a third of the brain, 1.15 x
    head[grey] *= 1.15
    fu = head.copy()
    focus = _ball(shape, (50, 40, 32), 3.0)
    assert focus[grey].sum() == focus.sum()
    fu[focus] = 90.0
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    # the images are given as their own N4 output: N4 would take a broad 15 % step for
    # bias and flatten it, which is not what this test is about
    p = load_params()
    rp = register_pair(b, f, threads=p.registration_threads, seed=p.seed, baseline_n4=b,
                       followup_n4=f)
    local = detect_registered(rp, "t2starw", params=p)
    glob = detect_registered(rp, "t2starw",
                             params=p.model_copy(update={"local_reference_mm": 0.0}))
    # candidate label maps are on the baseline grid, [i, j, k] like the arrays here
    on = [c for c in local.candidates if c["flagged"] and np.any((local.labels == c["id"]) & focus)]
    assert len(on) == 1 and on[0]["type"] == "new_dark_focus", local.candidates
    assert not any(c["flagged"] and np.any((glob.labels == c["id"]) & focus)
                   for c in glob.candidates)
    assert float(local.z[focus].min()) < -local.parameters["z_review"]


def test_ventricle_margin_marks_new_csf_rim_not_a_new_lesion(tmp_path: Path) -> None:
    """T1w: ventricles grown by 2 voxels at follow-up (tissue 100 -> CSF 20) and a new
    dark lesion (0.55 x tissue) in white matter far from them. Flagged candidates on
    the new CSF rim are marked ``ventricle_margin``; the lesion's candidate is flagged
    and not marked; linking to a ventricular finding unflags only the rim ones."""
    from mri_safety.change.volume_finding import link_ventricle_margin

    rng = np.random.default_rng(5)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    fu = head.copy()
    rim = _centred_ellipsoid(shape, (6, 12, 7)) & ~_centred_ellipsoid(shape, (4, 10, 5))
    fu[rim] = 20.0 + (head[rim] - 100.0) * 0.1               # tissue became CSF
    lesion = _ball(shape, (50, 25, 30), 3.0)
    fu[lesion] *= 0.55
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    doc = compare_main(paths[0], paths[1], tmp_path / "out", "brain", "t1w", None)
    lab: Any = nib.load(str(tmp_path / "out" / "candidates.nii.gz"))
    labels = np.asarray(lab.dataobj)
    near_rim = ndi.binary_dilation(rim, iterations=2)
    flagged = [x for x in doc["candidates"] if x["flagged"]]
    on_lesion = [x for x in flagged if np.any((labels == x["id"]) & lesion)]
    on_rim = [x for x in flagged if np.any((labels == x["id"]) & rim)]
    assert len(on_lesion) == 1 and not on_lesion[0]["ventricle_margin"], doc["candidates"]
    assert on_rim and all(x["ventricle_margin"] for x in on_rim), on_rim
    for x in doc["candidates"]:  # marked ones lie on the grown ventricles
        if x["ventricle_margin"]:
            share = float(near_rim[labels == x["id"]].mean())
            assert share > 0.9 and x["sign"] == -1, (x, share)
    ids = link_ventricle_margin(doc["candidates"], "brain-ventricles-vs-baseline")
    assert sorted(ids) == sorted(x["id"] for x in on_rim)
    assert [x["id"] for x in doc["candidates"] if x["flagged"]] == [on_lesion[0]["id"]]


@pytest.mark.parametrize("mass", [False, True])
def test_ventricle_margin_not_given_to_a_mass_beside_enlarged_ventricles(
        tmp_path: Path, mass: bool) -> None:
    """T2w pooled with FLAIR (as the pipeline compares them): ventricles grown by 2
    voxels (tissue -> CSF: brighter on T2w, darker on FLAIR). Without anything else the
    rim's candidate is marked ``ventricle_margin``; with a new mass abutting the grown
    ventricles (1.7 x tissue on T2w, 1.6 x on FLAIR) the candidate that takes in the
    mass is flagged and not marked, whatever share of it lies on the rim, so that
    linking to a ventricular-enlargement finding can never hide it."""
    rng = np.random.default_rng(5)
    shape = (72, 80, 64)
    flair = _synthetic_head(shape, rng)
    v0, grown = _centred_ellipsoid(shape, (4, 10, 5)), _centred_ellipsoid(shape, (6, 12, 7))
    rim = grown & ~v0
    blob = _ball(shape, (35.5, 39.5, 31.5 + 10.5), 4.0) & ~grown  # touches the grown rim
    t2 = flair.copy()
    t2[v0] = 250.0 + (flair[v0] - 20.0)                             # CSF bright on T2w
    t2f, flf = t2.copy(), flair.copy()
    t2f[rim] = 250.0 + (flair[rim] - 100.0) * 0.1
    flf[rim] = 20.0 + (flair[rim] - 100.0) * 0.1
    if mass:
        t2f[blob] *= 1.7
        flf[blob] *= 1.6
    paths = _save_noisy(tmp_path, [("t2b", t2), ("t2f", t2f), ("flb", flair), ("flf", flf)],
                        rng)
    doc = compare_main(paths[0], paths[1], tmp_path / "out", "brain", "t2w",
                       [(paths[2], paths[3], "flair")])
    lab: Any = nib.load(str(tmp_path / "out" / "candidates.nii.gz"))
    labels = np.asarray(lab.dataobj)
    on_rim = [x for x in doc["candidates"] if np.any((labels == x["id"]) & rim)]
    on_mass = [x for x in doc["candidates"] if np.any((labels == x["id"]) & blob)]
    assert on_rim, doc["candidates"]
    if not mass:
        assert all(x["ventricle_margin"] for x in on_rim if x["flagged"]), on_rim
    else:
        assert on_mass and all(x["flagged"] and not x["ventricle_margin"] for x in on_mass), \
            on_mass
        assert any("not attached to a ventricular enlargement" in r
                   for x in on_mass for r in x["reasons"]), on_mass


def test_lesion_likeness_is_judged_against_the_local_tissue(tmp_path: Path) -> None:
    """A new lesion in a region of darker normal tissue (a 20 mm block at 0.86 x the tissue
    median) reaching 1.12 x the median (1.3 x its
    surroundings) is lesion-like against the local tissue (``local_reference_mm``,
    default 5 mm) and flagged; with the global rule alone (``local_reference_mm=0``: 1.2 x
    the median, smoothed or at the follow-up's own resolution) it has no candidate.
    A lesion of normal (median) tissue at 1.3 x is flagged by both."""
    rng = np.random.default_rng(5)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = _centred_ellipsoid(shape, (shape[0] * 0.36, shape[1] * 0.40, shape[2] * 0.36))
    head[brain & (head > 50)] = 100.0         # flat tissue: no voxel of texture reaches 1.2
    dark = np.zeros(shape, bool)
    dark[26:46, 48:68, 22:42] = True          # a 'white matter' block
    dark &= head > 50
    head[dark] = 86.0
    fu = head.copy()
    in_dark = _ball(shape, (36, 58, 32), 2.5)
    in_norm = _ball(shape, (36, 22, 32), 2.5)
    assert dark[in_dark].all() and not dark[in_norm].any()
    for b in (in_dark, in_norm):
        fu[ndi.gaussian_filter(b.astype(float), 0.7) > 0.3] *= 1.3
    bp, fp = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = sitk.ReadImage(str(bp)), sitk.ReadImage(str(fp))

    def found(res: Any) -> tuple[bool, bool]:
        hits = [res.labels == c["id"] for c in res.candidates if c["flagged"]]
        return (any(bool(np.any(h & in_dark)) for h in hits),
                any(bool(np.any(h & in_norm)) for h in hits))

    # the images are bias-free: given as their own N4 output, since N4 would flatten a
    # 20 mm block of this small head (real grey/white contrast varies at a finer scale)
    from mri_safety.change.compare import detect_registered, register_pair

    p = load_params()
    b32, f32 = sitk.Cast(b, sitk.sitkFloat32), sitk.Cast(f, sitk.sitkFloat32)
    rp = register_pair(b32, f32, threads=1, seed=p.seed, baseline_n4=b32, followup_n4=f32)
    local = detect_registered(rp, "t2w", params=p)
    assert found(local) == (True, True), local.candidates
    assert sum(c["flagged"] for c in local.candidates) == 2, local.candidates
    glob = detect_registered(rp, "t2w", params=load_params(local_reference_mm=0.0))
    assert found(glob) == (False, True), glob.candidates


def test_small_focus_is_judged_lesion_like_at_the_followups_own_resolution(
        tmp_path: Path) -> None:
    """A 3 mm new lesion at 1.27 x the tissue loses its peak to the 1 mm smoothing
    (smoothed follow-up under the 1.2 x lesion-likeness level everywhere in it) but is
    above the level at the follow-up's own resolution, on normal baseline tissue: it is
    flagged. The same focus on baseline CSF (a ventricle) gets no such allowance."""
    from mri_safety.change.compare import register_pair, z_registered
    from mri_safety.change.zmap import lesion_level

    rng = np.random.default_rng(11)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = _centred_ellipsoid(shape, (shape[0] * 0.36, shape[1] * 0.40, shape[2] * 0.36))
    head[brain & (head > 50)] = 100.0          # flat tissue: the level is 1.2 x 100
    fu = head.copy()
    in_tissue = _ball(shape, (36, 58, 32), 1.5)
    in_csf = _ball(shape, (36, 40, 32), 1.5)  # centre of the dark 'ventricle'
    assert (head[in_tissue] > 80).all() and (head[in_csf] < 40).all()
    fu[in_tissue] *= 1.27
    fu[in_csf] = 1.27 * float(np.median(head[head > 50]))
    bp, fp = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = sitk.ReadImage(str(bp)), sitk.ReadImage(str(fp))
    p = load_params()
    zp = z_registered(register_pair(b, f, threads=1, seed=p.seed), p)
    level = lesion_level(zp.base, zp.tissue, p.hyper_ratio, p.local_reference_mm,
                         (1.0, 1.0, 1.0))
    assert (zp.fu[in_tissue] < level[in_tissue]).all()          # smoothed: under the level
    assert (zp.fu_native[in_tissue] >= level[in_tissue]).mean() > 0.8   # native: above it
    res = detect_pair(b, f, contrast="flair")
    hits = [res.labels == c["id"] for c in res.candidates if c["flagged"]]
    assert any(bool(np.any(h & in_tissue)) for h in hits), res.candidates
    assert not any(bool(np.any(h & in_csf)) for h in hits), res.candidates


@pytest.mark.slow
def test_t1w_bright_and_dark_foci_found_on_real_no_change_pair() -> None:
    """A 10 mm T1-bright focus (1.6 x white matter: methaemoglobin, fat) and a
    10 mm T1-dark one (0.6 x, a T1-hypointense lesion) put into the real HFP
    scan are flagged, with the right sign, where they were put, on the
    HFS -> HFP no-change pair (0 flagged without them). The T1-bright rule
    (docs/detection.md, method step 6) must not cost a hyperintense finding.
    """
    from mri_safety.change.compare import covered_region, register_pair
    from mri_safety.evaluation.pairs import deep_white_matter_points, load_positions_pair, put_foci

    need_data("dicom", "patient-positions")
    pr = load_positions_pair("HFS", "HFP")
    p = load_params()
    rp = register_pair(pr.fixed, pr.moving, threads=1, seed=p.seed, contrast="t1w")
    # two deep white-matter points of the baseline, >= 40 mm apart, put into the
    # follow-up at the points the registration maps them to (where both visits are seen)
    both = rp.brain & covered_region(rp.followup, rp.baseline, rp.transform)
    a, c = deep_white_matter_points(rp.baseline_n4, both, 2, apart_mm=40.0)
    moved = put_foci(pr.moving, rp.transform, [(a, 10.0, 1.6), (c, 10.0, 0.6)])
    res = detect_pair(pr.fixed, moved, contrast="t1w")
    flagged = [x for x in res.candidates if x["flagged"]]
    print([(x["type"], x["volume_mm3"], x["centroid_ras_mm"]) for x in flagged])

    def near(pt_lps: np.ndarray, ctype: str) -> bool:
        ras = pt_lps * np.array([-1.0, -1.0, 1.0])
        return any(x["type"] == ctype and
                   np.linalg.norm(np.array(x["centroid_ras_mm"]) - ras) <= 6.0
                   for x in flagged)

    assert near(a, "t1_signal_increase"), flagged
    assert near(c, "t1_signal_decrease"), flagged
    assert len(flagged) <= 3


def test_fine_images_are_analysed_at_1mm_and_outputs_keep_the_native_grid(tmp_path: Path
                                                                          ) -> None:
    """A 0.6 mm pair (0.216 mm3 voxels) is compared on the 1 mm analysis grid
    (mri_safety.preprocess.grid); the label map, z-map and resampled follow-up are
    written on the baseline file's own 0.6 mm grid, each flagged candidate's label lies
    on its inserted lesion, and its baseline voxel centroid is a native voxel index."""
    rng = np.random.default_rng(5)
    shape = (120, 134, 106)                      # 72 x 80.4 x 63.6 mm at 0.6 mm
    head = _synthetic_head(shape, rng)
    fu = head.copy()
    truth = np.zeros(shape, bool)
    for c, rad in [((40, 50, 53), 5.0), ((77, 83, 47), 3.4)]:   # 3 mm and 2 mm radius
        b = _ball(shape, c, rad)
        fu[ndi.gaussian_filter(b.astype(float), 1.2) > 0.3] *= 1.8
        truth |= b
    aff = np.diag([-0.6, 0.6, 0.6, 1.0])
    aff[:3, 3] = (36.0, -40.0, -30.0)
    paths = []
    for name, img in (("base", head), ("fu", fu)):
        p = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image((img + rng.normal(0, 2.0, shape)).astype(np.float32), aff),
                 str(p))
        paths.append(p)
    out = tmp_path / "out"
    doc = compare_main(paths[0], paths[1], out, "brain", "flair", None)
    assert doc["parameters"]["analysis_grid"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert doc["parameters"]["analysis_grid"]["native_spacing_mm"] == [0.6, 0.6, 0.6]
    for name in ("candidates.nii.gz", "zmap.nii.gz", "followup_in_baseline.nii.gz"):
        img: Any = nib.load(str(out / name))
        assert img.shape == shape and np.allclose(img.affine, aff, atol=1e-4), name
    labels = np.asarray(nib.load(str(out / "candidates.nii.gz")).dataobj)  # type: ignore[attr-defined]
    flagged = [c for c in doc["candidates"] if c["flagged"]]
    assert len(flagged) == 2, doc["candidates"]
    tl, _ = ndi.label(truth)
    hits = set()
    for c in flagged:
        region = labels == c["id"]
        hit = np.unique(tl[region & truth])
        assert len(hit) == 1 and hit[0] > 0, c
        hits.add(int(hit[0]))
        ijk = np.array(c["centroid_baseline_voxel"])
        assert np.allclose(aff[:3, :3] @ ijk + aff[:3, 3], c["centroid_ras_mm"], atol=0.02)
        centre = np.argwhere(tl == hit[0]).mean(axis=0)
        assert np.linalg.norm((ijk - centre) * 0.6) < 1.5          # mm
    assert hits == {1, 2}
    # the follow-up written back on the baseline grid shows the brighter lesion there
    f_back = np.asarray(nib.load(str(out / "followup_in_baseline.nii.gz")).dataobj)  # type: ignore[attr-defined]
    big = tl == tl[40, 50, 53]
    assert f_back[big].mean() > 1.5 * f_back[ndi.binary_dilation(big, iterations=6) & ~
                                              ndi.binary_dilation(big, iterations=3)].mean()


@pytest.mark.slow
def test_real_07mm_3d_t1_no_change_pair_on_the_analysis_grid(tmp_path: Path) -> None:
    """The real 0.7 mm 3D T1 against itself moved (7/-4/3 deg, 10/-6/4 mm, bias field,
    3 % Rician noise): compared on the 1 mm analysis grid (recorded in the output),
    registration ok with a residual misregistration (the noise model's edge term)
    under 0.5 mm, at most one candidate flagged (issue 5 bar for no-change pairs),
    and the maps on the native 0.7 mm grid."""
    from mri_safety.evaluation.pairs import load_highres_t1_pair

    need_data("dicom", "brain-t1-3d", "ref", "anat-T1w.nii.gz")
    pair = load_highres_t1_pair()
    assert pair.true_transform is not None
    bp, fp = tmp_path / "base.nii.gz", tmp_path / "fu.nii.gz"
    sitk.WriteImage(pair.fixed, str(bp))
    sitk.WriteImage(pair.moving, str(fp))
    doc = compare_main(bp, fp, tmp_path / "out", "brain", "t1w", None)
    assert doc["parameters"]["analysis_grid"]["spacing_mm"] == [1.0, 1.0, 1.0]
    assert doc["registration"]["status"] == "ok"
    assert doc["registration"]["residual_misregistration_mm"] < 0.5
    assert sum(c["flagged"] for c in doc["candidates"]) <= 1, doc["candidates"]
    for name in ("candidates.nii.gz", "zmap.nii.gz", "followup_in_baseline.nii.gz"):
        img: Any = nib.load(str(tmp_path / "out" / name))
        assert img.shape == tuple(pair.fixed.GetSize()), name
    # the follow-up written on the baseline grid matches the baseline (motion undone)
    base = np.asarray(nib.load(str(bp)).dataobj, np.float64)  # type: ignore[attr-defined]
    back = np.asarray(nib.load(str(tmp_path / "out" / "followup_in_baseline.nii.gz")).dataobj,  # type: ignore[attr-defined]
                      np.float64)
    head = base > np.percentile(base, 70)
    assert np.corrcoef(base[head], back[head])[0, 1] > 0.9


@pytest.mark.slow
def test_real_07mm_3d_t1_white_matter_dark_foci_are_found(tmp_path: Path) -> None:
    """Eight 5 mm T1-dark foci (0.7 x) put into the white matter of the real 0.7 mm
    3D T1 before the motion of the no-change pair: at least seven flagged within
    4 mm of their centres, at most one flagged candidate elsewhere. Measured
    2026-12-05: 8 of 8, none elsewhere (4 of 8 before the T1w rule of that day,
    whose bright-structure mask covered 97 % of this image's tissue)."""
    from mri_safety.evaluation.pairs import load_highres_t1_pair

    need_data("dicom", "brain-t1-3d", "ref", "anat-T1w.nii.gz")
    pair = load_highres_t1_pair(focus_mm=5.0, gain=0.7, n_foci=8)
    assert pair.truth is not None
    bp, fp = tmp_path / "base.nii.gz", tmp_path / "fu.nii.gz"
    sitk.WriteImage(pair.fixed, str(bp))
    sitk.WriteImage(pair.moving, str(fp))
    doc = compare_main(bp, fp, tmp_path / "out", "brain", "t1w", None)
    centres = []
    for lab in range(1, 9):
        ijk = np.argwhere(pair.truth == lab).mean(axis=0)
        lps = pair.fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
        centres.append(np.array([-lps[0], -lps[1], lps[2]]))
    flagged = [c for c in doc["candidates"] if c["flagged"]]
    near = [[float(np.linalg.norm(np.array(c["centroid_ras_mm"]) - q)) <= 4.0 for q in centres]
            for c in flagged]
    found = sum(any(row[k] for row in near) for k in range(8))
    elsewhere = sum(not any(row) for row in near)
    assert found >= 7, (found, flagged)
    assert elsewhere <= 1, flagged
    assert all(c["type"] == "t1_signal_decrease" for c, row in zip(flagged, near, strict=True)
               if any(row))


def _t1_head_with_strands(shape: tuple[int, int, int], rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A T1w-like head: grey matter (80) with sheets of white matter (115) 3 voxels
    thick every 8 voxels, dark ventricles, a bright scalp; returns (image, strands)."""
    img = _synthetic_head(shape, rng) * 0.8
    brain = img > 50
    strands = brain & ((np.arange(shape[0]) % 8) < 3)[:, None, None]
    strands &= ~_centred_ellipsoid(shape, (6, 12, 7))
    img[strands] = 115.0 + (img[strands] - 80.0)
    return img, strands


def test_t1w_dark_focus_in_a_thin_white_matter_strand_is_found(tmp_path: Path) -> None:
    """On T1w, white matter is the bright tissue, and every strand of it thinner than
    the 6 mm top-hat passes the small-bright-structure test of method step 6. Until
    2026-12-05 that test left such strands (and 2 mm around them) out of the T1w
    search on every image, so a T1-dark focus there was never a candidate (97 % of a
    real 3D T1 was out). On a 1 mm image only structures brighter than white matter
    by ``hyper_ratio`` are left out now: a 0.6 x focus inside a 3 mm strand is
    flagged as a T1w decrease, and nothing else is flagged."""
    rng = np.random.default_rng(21)
    shape = (72, 80, 64)
    t1, strands = _t1_head_with_strands(shape, rng)
    focus = _ball(shape, (33, 20, 30), 3.0) & (t1 > 50)
    assert strands[33, 20, 30]
    fu = t1.copy()
    fu[ndi.gaussian_filter(focus.astype(float), 0.7) > 0.3] *= 0.6
    bp, fp = _save_noisy(tmp_path, [("b", t1), ("f", fu)], rng)
    doc = compare_main(bp, fp, tmp_path / "out", "brain", "t1w", None)
    flagged = [c for c in doc["candidates"] if c["flagged"]]
    hit = _candidate_on(doc, tmp_path / "out", focus)
    assert hit["flagged"] and hit["type"] == "t1_signal_decrease", doc["candidates"]
    assert [c["id"] for c in flagged] == [hit["id"]], flagged


def test_t1_bright_mask_keeps_vessels_and_fat_and_leaves_white_matter() -> None:
    """The T1w mask of structures bright at baseline (``_baseline_bright``) covers a
    vessel brighter than white matter and its 2 mm margin, not the thin strands of
    white matter that the plain top-hat mask covers."""
    from mri_safety.change.compare import _baseline_bright

    shape = (40, 40, 40)
    b = np.full(shape, 0.85, np.float32)                  # grey matter
    strands = np.zeros(shape, bool)
    strands[(np.arange(40) % 8) < 3] = True                # 3 mm white-matter sheets
    b[strands] = 1.2
    vessel = np.zeros(shape, bool)
    vessel[4:36, 21:23, 21:23] = True                       # a 2 mm vessel at 1.9
    b[vessel] = 1.9
    tissue = np.ones(shape, bool)
    old, t1 = _baseline_bright(b, tissue, tissue, (1.0, 1.0, 1.0), 1.2)
    far = strands & ~ndi.binary_dilation(vessel, iterations=4)
    assert old[far].mean() > 0.9
    assert t1[far].mean() < 0.05
    assert t1[vessel].all() and old[vessel].all()
    assert t1[10, 21, 24]                                   # within 2 mm of the vessel


def _t2w_and_flair_heads(shape: tuple[int, int, int], rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A T2w and a FLAIR head of one visit (:func:`_synthetic_head`, drawn from ``rng``
    in that order) and their ventricles: CSF (250) is the brightest thing on T2w, nulled
    (20) on FLAIR."""
    t2 = _synthetic_head(shape, rng)
    flair = _synthetic_head(shape, rng)
    vent = _centred_ellipsoid(shape, (4, 10, 5))
    t2[vent] = 250.0
    return t2, flair, vent


def test_t2w_increase_in_a_space_dark_on_flair_at_both_visits_is_fluid(tmp_path: Path
                                                                       ) -> None:
    """T2w pooled with the FLAIR pair of the same visits: a brighter T2w signal inside
    the ventricles (CSF flow, partial volume), where FLAIR is dark at both visits, is
    listed but not flagged, with its reason; without the FLAIR pair it is flagged. A new
    lesion, bright on both contrasts, stays flagged. (Real MS visits: the T2w comparison
    flagged cisterns, the fourth ventricle and sulci; docs/detection.md.)"""
    rng = np.random.default_rng(21)
    shape = (72, 80, 64)
    t2, flair, vent = _t2w_and_flair_heads(shape, rng)
    flow = vent & (np.indices(shape)[1] < 40)  # the front half of the ventricles
    lesion = ndi.gaussian_filter(_ball(shape, (24, 30, 32), 3.0).astype(float), 0.7) > 0.3
    t2_fu, flair_fu = t2.copy(), flair.copy()
    t2_fu[flow] *= 1.5
    t2_fu[lesion] *= 1.8
    flair_fu[lesion] *= 1.8
    solo, both = _solo_and_with_flair(tmp_path, "t2w", t2, t2_fu, flair, flair_fu, rng)

    fluid_s = _candidate_on(solo, tmp_path / "solo", flow)
    fluid_b = _candidate_on(both, tmp_path / "both", flow)
    assert fluid_s["flagged"] and fluid_s["sign"] == 1
    assert not fluid_b["flagged"] and fluid_b["sign"] == 1
    assert any(r.startswith("dark on FLAIR at both visits") for r in fluid_b["reasons"])
    les = _candidate_on(both, tmp_path / "both", lesion)
    assert les["flagged"] and les["contrasts"] == ["t2w", "flair"]
    assert not any(r.startswith("dark on FLAIR") for r in les["reasons"])


def test_new_fluid_in_tissue_is_found_where_the_pooled_map_cancels(tmp_path: Path) -> None:
    """T2w pooled with FLAIR: a new cyst (fluid where there was tissue: T2w rises, FLAIR
    falls) cancels in the pooled lesion map; it is found on the fluid map and flagged as
    ``new_fluid_space``. The same signature one voxel around the ventricles (their
    widening: atrophy or a tissue shift) is listed but not flagged, and a new lesion,
    bright on both contrasts, stays a flagged T2 hyperintensity. Before 2026-12-06 the
    cyst gave no candidate at all once pooled (synthetic follow-ups: 6-10 mm cysts at z
    14-25 on each contrast alone)."""
    rng = np.random.default_rng(23)
    shape = (72, 80, 64)
    t2, flair, vent = _t2w_and_flair_heads(shape, rng)
    cyst = ndi.gaussian_filter(_ball(shape, (24, 56, 34), 3.5).astype(float), 0.7) > 0.3
    wider = _centred_ellipsoid(shape, (5, 11, 6)) & ~vent
    lesion = ndi.gaussian_filter(_ball(shape, (50, 26, 30), 3.0).astype(float), 0.7) > 0.3
    t2_fu, flair_fu = t2.copy(), flair.copy()
    for m in (cyst, wider):
        t2_fu[m], flair_fu[m] = 250.0, 20.0
    t2_fu[lesion] *= 1.8
    flair_fu[lesion] *= 1.8
    solo, both = _solo_and_with_flair(tmp_path, "t2w", t2, t2_fu, flair, flair_fu, rng)

    alone = _candidate_on(solo, tmp_path / "solo", cyst)
    assert alone["flagged"] and alone["type"] == "new_t2_hyperintensity"
    new = _candidate_on(both, tmp_path / "both", cyst)
    assert new["flagged"] and new["type"] == "new_fluid_space" and new["sign"] == 1
    assert new["contrasts"] == ["t2w", "flair"]
    assert "fluid map" in new["reasons"][0]
    fz: Any = nib.load(str(tmp_path / "both" / "zmap_fluid.nii.gz"))
    assert np.asarray(fz.dataobj)[cyst].max() == pytest.approx(new["peak_z"], abs=1e-3)
    pooled: Any = nib.load(str(tmp_path / "both" / "zmap.nii.gz"))
    assert np.abs(np.asarray(pooled.dataobj)[cyst]).mean() < 0.5 * new["peak_z"]
    rim = _candidate_on(both, tmp_path / "both", wider)
    assert rim["type"] == "new_fluid_space" and not rim["flagged"]
    assert any("widened sulcus, cistern or ventricle" in r for r in rim["reasons"])
    les = _candidate_on(both, tmp_path / "both", lesion)
    assert les["flagged"] and les["type"] == "new_t2_hyperintensity"
    assert sum(c["flagged"] for c in both["candidates"]) == 2


@pytest.mark.slow
def test_extra_axial_collection_over_the_convexity_is_flagged() -> None:
    """A crescent collection (FLAIR-bright, 2 x the brain median: blood or protein,
    up to 4 mm thick, over 30 mm of the convexity) between the brain and the skull
    of a real FLAIR follow-up (MS patient01 study2) is flagged as one extra-axial
    change holding much of it, where it was put. The search region is the
    intracranial mask; while that stayed within about 1 mm of the brain (the Otsu
    head mask before 2026-12-06) only a 333 mm3 piece of it was a candidate.
    (A collection under the lesion-like level, 1.3 x the median, is not found:
    docs/detection.md, "Not done".)"""
    from mri_safety.preprocess.bias import n4_correct
    from mri_safety.preprocess.masks import brain_masks

    d = need_data("longitudinal-ms", "patient01")
    b = sitk.ReadImage(str(d / "study1_FLAIR.nii.gz"), sitk.sitkFloat32)
    f = sitk.ReadImage(str(d / "study2_FLAIR.nii.gz"), sitk.sitkFloat32)
    fu = sitk.GetArrayFromImage(f).transpose(2, 1, 0).astype(np.float32)  # [i, j, k]
    brain = sitk.GetArrayFromImage(brain_masks(n4_correct(f)[0]).brain).transpose(2, 1, 0) > 0
    sp = np.array(f.GetSpacing())
    out_mm = ndi.distance_transform_edt(~brain, sampling=sp)
    # the brain's surface point furthest up and to the subject's right (RAS +x, +z)
    aff = np.array(f.GetDirection()).reshape(3, 3) * sp * [[-1], [-1], [1]]
    ijk = np.argwhere(brain)
    ras = ijk @ aff.T
    top = ijk[np.argmax(ras @ np.array([1.0, 0.0, 1.0]))]
    grid = np.indices(fu.shape).reshape(3, -1).T
    near = (np.linalg.norm((grid - top) * sp, axis=1) <= 15.0).reshape(fu.shape)
    crescent = near & (out_mm > 0) & (out_mm <= 4.0)
    fu[crescent] = 2.0 * float(np.median(fu[brain]))
    moved = sitk.GetImageFromArray(fu.transpose(2, 1, 0))
    moved.CopyInformation(f)
    res = detect_pair(b, moved, contrast="flair")
    centre = (top @ aff.T) + np.array(f.GetOrigin()) * [-1, -1, 1]
    hits = [x for x in res.candidates if x["flagged"] and x["type"] == "extra_axial_change"
            and np.linalg.norm(np.array(x["centroid_ras_mm"]) - centre) <= 20.0]
    vol = float(crescent.sum() * np.prod(sp))
    print(f"{vol:.0f} mm3 at {centre}:", [(x["type"], x["flagged"], x["volume_mm3"],
                                         x["centroid_ras_mm"]) for x in res.candidates
                                        if np.linalg.norm(np.array(x["centroid_ras_mm"])
                                                          - centre) <= 40.0])
    assert hits, res.candidates[:5]
    assert max(x["volume_mm3"] for x in hits) > 0.3 * vol  # measured 2151 of 3842 mm3 (2026-12-07)


@pytest.mark.slow
def test_sinus_change_under_the_skull_base_is_not_an_extra_axial_finding() -> None:
    """Real MS patient03 T2w, study1 -> study2 (3 mm axial slices; the expert
    marks only lesion changes, no collection). The mucosa of the ethmoid and the
    orbital contents under the anterior cranial fossa differ between the visits
    (slice position, sinus content). The intracranial mask reaches past the
    template's intracranial region only through the vault
    (``preprocess.masks.vault_reach``); before 2026-12-07 its 3 mm band and
    dilation reached down into the ethmoid and this pair flagged three
    "extra-axial changes" of 286-402 mm3 there (after: none flagged, and no
    extra-axial candidate over 88 mm3 left at the skull base)."""
    d = need_data("longitudinal-ms", "patient03")
    b = sitk.ReadImage(str(d / "study1_T2W.nii.gz"), sitk.sitkFloat32)
    f = sitk.ReadImage(str(d / "study2_T2W.nii.gz"), sitk.sitkFloat32)
    res = detect_pair(b, f, contrast="t2w")
    extra = [(x["volume_mm3"], x["centroid_ras_mm"], x["flagged"]) for x in res.candidates
             if x["type"] == "extra_axial_change"]
    print("extra-axial candidates:", extra[:8])
    assert res.parameters["mask_method"].startswith("preprocess.masks.brain_masks (MNI")
    assert not [x for x in extra if x[2]], extra


def _head_with_gap(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A 72 x 80 x 64 (1 mm) textured 'brain' (100), a dark 6 mm gap (5) and a bright
    'skull' (120): ``brain, outer`` (brain + gap), ``skull, head`` (the baseline),
    ``fu`` (the follow-up: the brain plus smooth scan-rescan noise, SD 6)."""
    shape = (72, 80, 64)
    brain = _centred_ellipsoid(shape, (22.0, 26.0, 20.0))
    outer = _centred_ellipsoid(shape, (28.0, 32.0, 26.0))   # 6 mm gap, then the skull
    skull = _centred_ellipsoid(shape, (31.0, 35.0, 29.0)) & ~outer
    tex = ndi.gaussian_filter(rng.normal(size=shape), 2.0)
    head = np.where(brain, 100.0 + 8.0 * tex / tex.std(), 0.0) + 120.0 * skull + 5.0 * (
        outer & ~brain)
    rescan = ndi.gaussian_filter(rng.normal(size=shape), 1.5)
    fu = head + 6.0 * rescan / rescan.std() * brain
    return brain, outer, skull, head, fu


def test_brain_noise_does_not_depend_on_dark_voxels_in_the_search(tmp_path: Path) -> None:
    """The local noise SD of the change (method step 5) is measured where there is
    signal: a search region grown over a dark 6 mm gap between the brain and the
    'skull' (its voxels more than 2 mm from either) leaves every brain voxel's z as
    it is, while the follow-up's brain differs by smooth scan-rescan noise and the
    gap by the image noise alone. Measured over the whole search region (the rule
    before 2026-12-06), the gap's change entered the brain's noise: here the brain
    z fell to a quarter; on a synthetic T2*w visit with atrophy only (detect_synth
    s7 SYN002 24h) the bone and CSF under the skull lowered the SD at the brain
    surface and three cortical noise spots were flagged as dark foci once the
    intracranial mask reached the skull."""
    from dataclasses import replace

    from mri_safety.change.compare import register_pair, z_registered
    from mri_safety.change.masks import dilate_mm

    rng = np.random.default_rng(23)
    brain, outer, skull, head, fu = _head_with_gap(rng)
    one = (1.0, 1.0, 1.0)
    dark = outer & ~dilate_mm(brain, 2.0, one) & ~dilate_mm(skull, 2.0, one)
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    p = load_params()
    rp = register_pair(b, f, threads=1, seed=p.seed, brain=brain, baseline_n4=b,
                       followup_n4=f)
    near = z_registered(replace(rp, icv=brain.copy()), p)
    wide = z_registered(replace(rp, icv=brain | dark), p)
    inner = brain & near.brain
    assert wide.brain.sum() > 1.3 * near.brain.sum()
    assert np.array_equal(near.z[inner], wide.z[inner])


def test_dark_focus_outside_the_brain_is_not_a_t2star_candidate(tmp_path: Path) -> None:
    """T2*w/SWI: a dark region appearing between the brain and the skull (inside the
    intracranial mask, 500 mm3 of tissue-like signal going to near void) is no
    candidate: on T2*w the bone/air interfaces bloom and move with the head, and
    a new collection shows on FLAIR, T2w and T1w. The same change in the brain is a
    flagged ``new_dark_focus``; on FLAIR the outside one is an extra-axial change (not
    flagged under the collection size)."""
    from mri_safety.change.compare import detect_registered, register_pair
    from mri_safety.change.masks import dilate_mm

    rng = np.random.default_rng(29)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = _centred_ellipsoid(shape, (shape[0] * 0.36, shape[1] * 0.40, shape[2] * 0.36))
    gap = dilate_mm(brain, 6.0, (1.0, 1.0, 1.0)) & ~brain & (head < 50)
    head[gap] = 100.0 + rng.normal(0, 3.0, int(gap.sum()))   # tissue-like extra-axial layer
    fu = head.copy()
    g = np.indices(shape)
    outside = gap & (np.abs(g[1] - 40) <= 6) & (np.abs(g[2] - 32) <= 6) & (g[0] < 36)
    inside = _ball(shape, (42, 40, 32), 3.0)
    assert outside.sum() >= 150 and brain[inside].all()
    fu[outside] = 10.0
    fu[inside] = 10.0
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    p = load_params()
    rp = register_pair(b, f, threads=1, seed=p.seed, brain=brain, baseline_n4=b,
                       followup_n4=f)
    rp.icv = brain | gap

    def touching(res: Any, where: np.ndarray) -> list[dict[str, Any]]:
        return [c for c in res.candidates if np.any((res.labels == c["id"]) & where)]

    t2s = detect_registered(rp, "t2starw", params=p)
    assert not touching(t2s, outside), t2s.candidates
    on = touching(t2s, inside)
    assert len(on) == 1 and on[0]["flagged"] and on[0]["type"] == "new_dark_focus"
    flair = detect_registered(rp, "flair", params=p)
    out = [c for c in touching(flair, outside) if c["sign"] < 0]
    assert out and out[0]["location"]["tissue"] == "extra_axial", flair.candidates
    assert not any(c["flagged"] for c in out)


def test_new_dark_focus_on_flair_and_t2w_is_flagged_a_fading_lesion_is_not(tmp_path: Path
                                                                          ) -> None:
    """FLAIR/T2w decreases are reported where they make a new hypointense focus in the
    parenchyma (acute blood, calcification, fluid on FLAIR): a 7 mm ball of tissue going
    to 0.4 x the tissue signal is one flagged ``new_t2_hypointensity``. Two decreases
    of the same size and strong z are not: a lesion bright at baseline (1.7 x) fading back
    to tissue, and tissue darkening by 10 % (above 1 / hyper_ratio of the tissue
    around it), both stay ``t2_signal_decrease``. A 3 mm dark dot (microbleed or
    perivascular-space size, under ``t2_dark_min_diameter_mm``) is a
    ``new_t2_hypointensity`` that is not flagged."""
    from mri_safety.change.compare import detect_registered, register_pair

    rng = np.random.default_rng(41)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = _centred_ellipsoid(shape, (shape[0] * 0.36, shape[1] * 0.40, shape[2] * 0.36))
    dark, fading, dimmer = (_ball(shape, c, 3.5) for c in ((24, 26, 32), (48, 26, 32),
                                                            (36, 56, 32)))
    dot = _ball(shape, (36, 40, 44), 1.5)
    assert brain[dark | fading | dimmer | dot].all()
    base = head.copy()
    base[fading] *= 1.7
    fu = head.copy()
    fu[dark] *= 0.4
    fu[dimmer] *= 0.9
    fu[dot] *= 0.4
    paths = _save_noisy(tmp_path, [("base", base), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    p = load_params()
    assert dot.sum() < np.pi / 6 * p.t2_dark_min_diameter_mm ** 3
    rp = register_pair(b, f, threads=1, seed=p.seed, brain=brain, baseline_n4=b,
                       followup_n4=f)
    for contrast in ("flair", "t2w"):
        res = detect_registered(rp, contrast, params=p)

        def on(where: np.ndarray, res: Any = res) -> list[dict[str, Any]]:
            return [c for c in res.candidates if np.any((res.labels == c["id"]) & where)]

        hit = on(dark)
        assert len(hit) == 1 and hit[0]["flagged"], (contrast, res.candidates)
        assert hit[0]["type"] == "new_t2_hypointensity" and hit[0]["sign"] == -1
        assert hit[0]["volume_mm3"] > 0.5 * dark.sum()
        for where in (fading, dimmer):
            cand = on(where)
            assert cand and all(c["sign"] == -1 for c in cand), (contrast, res.candidates)
            assert min(abs(c["peak_z"]) for c in cand) > res.parameters["z_review"]
            assert not any(c["flagged"] for c in cand), (contrast, cand)
            assert all(c["type"] == "t2_signal_decrease" for c in cand)
        small = on(dot)
        assert len(small) == 1 and abs(small[0]["peak_z"]) > res.parameters["z_review"]
        assert small[0]["type"] == "new_t2_hypointensity" and not small[0]["flagged"], [
            (c["type"], c["flagged"], c["volume_mm3"], c["reasons"]) for c in small]
        assert res.parameters["z_review"] > 3
        assert sum(c["flagged"] for c in res.candidates) == 1, res.candidates


@pytest.mark.parametrize("change", ["rim", "cyst"])
def test_flair_dark_focus_beside_the_ventricles_is_not_taken_for_enlargement(
        tmp_path: Path, change: str) -> None:
    """FLAIR alone (CSF dark): ventricles grown by one voxel all round ("rim") are new
    ventricular CSF, marked ``ventricle_margin`` and not flagged. A 9 mm ball of tissue
    abutting the baseline ventricles that turns CSF-dark ("cyst": a cyst or bleed beside
    them) lies on what the ventricle rule takes for new ventricular CSF too, but it
    reaches 9 mm into the parenchyma, more than half its own width: it is one flagged
    ``new_t2_hypointensity``, not marked. Before 2026-12-07 it was marked and never
    flagged."""
    from mri_safety.change.compare import detect_registered, register_pair

    rng = np.random.default_rng(43)
    shape = (72, 80, 64)
    head = _synthetic_head(shape, rng)
    brain = _centred_ellipsoid(shape, (shape[0] * 0.36, shape[1] * 0.40, shape[2] * 0.36))
    v0 = _centred_ellipsoid(shape, (4, 10, 5))        # the phantom's ventricles (20)
    fu = head.copy()
    if change == "rim":
        where = _centred_ellipsoid(shape, (5, 11, 6)) & ~v0
    else:                                              # centre 4.5 voxels off the wall
        where = _ball(shape, (35.5 + 4 + 4.5, 39.5, 31.5), 4.5) & ~v0
    assert brain[where].all()
    fu[where] = 20.0 + (head[where] - 100.0) * 0.1
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    p = load_params()
    rp = register_pair(b, f, threads=1, seed=p.seed, brain=brain, baseline_n4=b,
                       followup_n4=f)
    res = detect_registered(rp, "flair", params=p)
    on = [c for c in res.candidates if np.any((res.labels == c["id"]) & where)]
    assert on and all(c["sign"] == -1 for c in on), res.candidates
    if change == "rim":
        assert not any(c["flagged"] for c in res.candidates), res.candidates
        assert any(c["ventricle_margin"] for c in on), on
    else:
        assert len(on) == 1 and on[0]["flagged"] and not on[0]["ventricle_margin"], on
        assert on[0]["type"] == "new_t2_hypointensity"
        assert any("not their enlargement" in r for r in on[0]["reasons"]), on
        assert sum(c["flagged"] for c in res.candidates) == 1, res.candidates


def test_new_bright_collection_does_not_raise_its_own_noise(tmp_path: Path) -> None:
    """A new bright collection between the brain and the 'skull' (follow-up only,
    0.6 or 1.2 x the tissue signal, 6 mm thick) does not set its own local noise SD
    (method step 5): its core z is 8.1 and 12.7 (contrast over the noise floor
    about 15), and the brain's z more than 8 mm from it barely moves.
    Two rules failed this test (2026-12-07):
    - measuring the SD over the voxels bright at either visit: the collection
      counted as signal and raised the SD of its own blocks (z 0.9 and 1.1);
    - filling the blocks outside the signal with the nearest valid block before
      the window median: the brain rim blocks holding the collection's smoothed
      edge were copied outwards and held most of the window (z 3.8 and 4.3)."""
    from dataclasses import replace

    from mri_safety.change.compare import register_pair, z_registered
    from mri_safety.change.masks import dilate_mm

    rng = np.random.default_rng(31)
    brain, outer, skull, head, fu = _head_with_gap(rng)
    one = (1.0, 1.0, 1.0)
    gap = outer & ~brain
    g = np.indices(brain.shape)
    crescent = gap & (g[0] > 50) & (np.abs(g[1] - 40) <= 12) & (np.abs(g[2] - 32) <= 12)
    assert crescent.sum() > 500
    paths = _save_noisy(tmp_path, [("base", head), ("fu", fu)], rng)
    b, f = (sitk.ReadImage(str(q), sitk.sitkFloat32) for q in paths)
    p = load_params()
    rp = register_pair(b, f, threads=1, seed=p.seed, brain=brain, baseline_n4=b,
                       followup_n4=f)
    arr = sitk.GetArrayFromImage(f).transpose(2, 1, 0)  # [i, j, k]

    def z_with(level: float) -> np.ndarray:
        img = sitk.GetImageFromArray(np.where(crescent, level, arr).transpose(2, 1, 0))
        img.CopyInformation(f)
        return z_registered(replace(rp, icv=brain | gap, followup=img, followup_n4=img), p).z

    z1, z2 = z_with(60.0), z_with(120.0)
    far = brain & ~dilate_mm(crescent, 8.0, one)
    rel = np.abs(z2[far] / z1[far] - 1.0)
    assert np.median(rel) < 0.02 and np.percentile(rel, 95) < 0.1
    core = crescent & ~dilate_mm(~crescent, 2.0, one)
    assert core.sum() > 100
    assert np.median(z1[core]) > 6.0 and np.median(z2[core]) > np.median(z1[core])
