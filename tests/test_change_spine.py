"""Spine change detection (mri_safety.change.spine via detect_pair(region="spine")).

Real data: ``../shared/data/spine/t2`` (spinalcordtoolbox sct_testing_data,
MIT). There is no real spine follow-up pair, so follow-ups are made from the
real ``t2.nii.gz``: a neck bend (``mri_safety.synth.spine.flexion_warp``), a
small rigid shift, added noise, and an intramedullary lesion whose SHAPE and
contrast to cord come from a different image (``t2_fake_lesion*``, 0.8 mm).
The manual cord mask only chooses where the lesion goes; the level labels
only score the result. Fast tests check the pure functions on constructed
arrays with known geometry.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import need_data
from scipy import ndimage as ndi

from mri_safety.change.compare import detect_pair, detect_registered, register_pair
from mri_safety.change.params import load_params
from mri_safety.change.spine import (
    SpineRegions,
    SyrinxEvidence,
    describe,
    fit_regions,
    is_syrinx,
    shape_along_cord,
    spine_regions,
)
from mri_safety.preprocess.spine import LEVEL_NAMES
from mri_safety.synth.sitkutil import array_to_sitk
from mri_safety.synth.spine import cord_blob, flexion_warp, load_spine

# --------------------------------------------------------------------------- helpers


def _nii(name: str) -> tuple[np.ndarray, np.ndarray]:
    img: Any = nib.load(str(need_data("spine", "t2", name)))
    return np.asarray(img.dataobj, np.float32), np.asarray(img.affine, np.float64)


def _lesion_fraction(target_ras: np.ndarray, shape: tuple[int, ...], affine: np.ndarray
                     ) -> np.ndarray:
    """The fake-lesion mask (0.8 mm, another image) moved so that its centroid lies at
    ``target_ras`` and resampled (linear: partial-volume fraction) onto ``shape``/``affine``."""
    les, laff = _nii("t2_fake_lesion_lesion_seg.nii.gz")
    m = (les > 0.5).astype(np.float32)
    centre = laff[:3, :3] @ np.argwhere(m > 0).mean(0) + laff[:3, 3]
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ idx + affine[:3, 3:4]
    src = world - target_ras[:, None] + centre[:, None]
    inv = np.linalg.inv(laff)
    v = inv[:3, :3] @ src + inv[:3, 3:4]
    return np.asarray(ndi.map_coordinates(m, v, order=1, mode="constant").reshape(shape))


def _followup(image: np.ndarray, affine: np.ndarray, *, angle_deg: float = 6.0,
              shift_mm: tuple[float, float, float] = (1.5, -1.0, 2.0), rot_deg: float = 2.0,
              noise: float = 0.02, seed: int = 0) -> sitk.Image:
    """Neck bend (flexion_warp), then a rigid rotation about LR + shift (LPS mm), then
    Gaussian noise of ``noise`` x the 99th percentile (seeded)."""
    bent = flexion_warp(image, affine, angle_deg)
    img = array_to_sitk(bent, affine)
    tx = sitk.Euler3DTransform()
    ctr = img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()])
    tx.SetCenter(ctr)
    tx.SetRotation(float(np.deg2rad(rot_deg)), 0.0, 0.0)
    tx.SetTranslation(shift_mm)
    moved = sitk.Resample(img, img, tx, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    a = sitk.GetArrayFromImage(moved)
    rng = np.random.default_rng(seed)
    a = np.clip(a, 0, None) + rng.normal(0.0, noise * float(np.percentile(image, 99)), a.shape)
    out = sitk.GetImageFromArray(a.astype(np.float32))
    out.CopyInformation(moved)
    return out


def _touches(res: Any, cand_id: int, truth: np.ndarray) -> bool:
    near = ndi.binary_dilation(res.labels == cand_id, np.ones((3, 3, 3), bool))
    return bool((near & truth).any())


def _truth_level(j: float) -> str:
    """Level of S index ``j`` of t2: the mid-body point label nearest along S.

    ``labels.nii.gz`` and ``t2_labeled_center_manual.nii.gz`` (mid-vertebral-body
    points) agree: C3 at j=44, C4 at 26, C5 at 9. ``t2_seg-manual_labeled.nii.gz``
    carries values one lower at the same places (docs/spine.md); identity is scored
    against the two point-label files, as in tests/test_spine_masks.py.
    """
    pts, _ = _nii("t2_labeled_center_manual.nii.gz")
    pts2, _ = _nii("labels.nii.gz")
    found = {int(v): float(np.argwhere(pts == v)[:, 1].mean()) for v in np.unique(pts[pts > 0])}
    for v in np.unique(pts2[pts2 > 0]):  # the two files must agree where both have a label
        assert abs(float(np.argwhere(pts2 == v)[:, 1].mean()) - found[int(v)]) <= 1.0
    best = min(found, key=lambda v: abs(found[v] - j))
    return LEVEL_NAMES[best]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def t2() -> dict[str, Any]:
    img, aff = _nii("t2.nii.gz")
    cord, _ = _nii("t2_seg-manual.nii.gz")
    return {"image": img, "affine": aff, "cord": cord > 0.5}


def test_inserted_cord_lesion_found_at_its_level_and_nothing_without_it(
        t2: dict[str, Any]) -> None:
    """Must-show: a follow-up of real t2 with a neck bend (6 deg), a rigid move (2 deg,
    (1.5, -1, 2) mm), noise and an intramedullary lesion (shape and lesion/cord ratio of
    t2_fake_lesion) in the cord at S index 44 (C3 mid-body) is flagged there, as an
    intramedullary cord_signal_change at C3; the same follow-up without the lesion flags
    nothing."""
    img, aff, cord = t2["image"], t2["affine"], t2["cord"]
    j = 44
    c = np.argwhere(cord[:, j, :]).mean(0)  # manual cord: only to place the lesion
    target = aff[:3, :3] @ np.array([c[0], j, c[1]]) + aff[:3, 3]
    frac = _lesion_fraction(target, img.shape, aff)
    frac *= np.clip(ndi.gaussian_filter(cord.astype(np.float32), 0.5) * 1.2, 0.0, 1.0)
    assert frac.sum() > 40  # the lesion (83 mm3 in its own image) lies in the cord
    ratio = load_spine().lesion_ratio  # lesion / cord intensity of t2_fake_lesion
    with_lesion = img * (1.0 + frac * (ratio - 1.0))
    base = array_to_sitk(img, aff)
    truth = frac > 0.25  # where the lesion lies in the baseline
    level = _truth_level(j)
    assert level == "C3"

    res = detect_pair(base, _followup(with_lesion, aff), contrast="t2w", region="spine")
    flagged = [cd for cd in res.candidates if cd["flagged"]]
    hits = [cd for cd in flagged if _touches(res, cd["id"], truth)]
    print("lesion:", json.dumps([{k: cd[k] for k in ("type", "score", "volume_mm3",
                                                     "location")} for cd in flagged]))
    assert hits, "inserted lesion not flagged"
    hit = hits[0]
    assert hit["location"]["region"] == "spine"
    assert hit["location"]["vertebral_level"] == level
    assert hit["location"]["compartment"] == "intramedullary"
    assert hit["type"] == "cord_signal_change"  # ~1.3x longer than wide: not a syrinx
    assert len(flagged) == len(hits)  # nothing else flagged
    assert res.parameters["mask_method"].startswith("preprocess.spine.spine_masks")
    lev = res.parameters["spine"]["levels"]
    assert lev["found"] and lev["followup"]["agreement"] >= 0.8  # both visits: same levels
    # the search region is the canal (~10 cm3 here), not the image (171 cm3)
    assert res.parameters["z_review"] < 4.3

    res0 = detect_pair(base, _followup(img, aff), contrast="t2w", region="spine")
    print("no lesion:", [(cd["type"], cd["score"], cd["location"]) for cd in res0.candidates])
    assert not [cd for cd in res0.candidates if cd["flagged"]]


def test_large_neck_bend_is_followed_by_the_spine_registration(t2: dict[str, Any]) -> None:
    """A neck bent 20 deg differently (besides the rigid move and noise of the test
    above): the brain's rigid step left the cord NCC-similar at 0.74 and missed this
    C3 lesion; the canal-focused rigid + 20 mm B-spline (register_spine) of the spine
    comparison finds it at C3, and the follow-up without it flags nothing."""
    img, aff, cord = t2["image"], t2["affine"], t2["cord"]
    j = 44
    c = np.argwhere(cord[:, j, :]).mean(0)
    frac = _lesion_fraction(aff[:3, :3] @ np.array([c[0], j, c[1]]) + aff[:3, 3], img.shape, aff)
    frac *= np.clip(ndi.gaussian_filter(cord.astype(np.float32), 0.5) * 1.2, 0.0, 1.0)
    with_lesion = img * (1.0 + frac * (load_spine().lesion_ratio - 1.0))
    base = array_to_sitk(img, aff)
    res = detect_pair(base, _followup(with_lesion, aff, angle_deg=20.0, seed=3), contrast="t2w",
                      region="spine")
    assert "B-spline" in res.registration["method"]
    assert res.registration["quality"] > 0.9
    flagged = [cd for cd in res.candidates if cd["flagged"]]
    hits = [cd for cd in flagged if _touches(res, cd["id"], frac > 0.25)]
    print("20 deg:", [(cd["type"], cd["score"], cd["location"]) for cd in flagged])
    assert len(hits) == len(flagged) == 1
    assert hits[0]["location"]["vertebral_level"] == _truth_level(j)
    res0 = detect_pair(base, _followup(img, aff, angle_deg=-20.0, seed=3), contrast="t2w",
                       region="spine")
    assert not [cd for cd in res0.candidates if cd["flagged"]]


def test_register_pair_rejects_an_unknown_region_or_spine_contrast(t2: dict[str, Any]) -> None:
    base = array_to_sitk(t2["image"], t2["affine"])
    brain = np.ones(t2["image"].shape, bool)
    with pytest.raises(ValueError, match="region"):
        register_pair(base, base, threads=1, seed=1, brain=brain, region="knee")
    with pytest.raises(ValueError, match="contrast"):
        register_pair(base, base, threads=1, seed=1, brain=brain, region="spine")


def test_syrinx_typed_by_fluid_shape_and_centre(t2: dict[str, Any]) -> None:
    """A central, CSF-bright cavity 16 mm long (synth.spine.cord_blob, as the synthetic
    studies make a syrinx) is typed ``syrinx``; a focal lesion 8 mm long, off-centre by
    up to 1 mm and as bright (the synthetic cord lesion), is ``cord_signal_change``."""
    sp = load_spine()
    scale = float(np.median(t2["image"][sp.cord]))
    base = array_to_sitk(sp.image * scale, sp.affine)
    types = {}
    for kind, length, width, value, central in (
            ("syrinx", 16.0, 0.6, sp.csf_value, True),
            ("cord_lesion", 8.0, 0.8, sp.lesion_ratio, False)):
        f = cord_blob(sp, 0.5, length, width, seed=7, central=central)
        img = (1 - f) * sp.image + f * np.float32(value) * (1.0 if central else sp.image)
        fu = _followup(img * scale, sp.affine, angle_deg=5.0, shift_mm=(0.5, 1.0, -1.0),
                       rot_deg=1.0, seed=3)
        res = detect_pair(base, fu, contrast="t2w", region="spine")
        hits = [cd for cd in res.candidates if cd["flagged"] and _touches(res, cd["id"], f > 0.25)]
        print(kind, [(cd["type"], cd["location"]) for cd in hits])
        assert len(hits) == 1
        types[kind] = hits[0]["type"]
        assert hits[0]["location"]["compartment"] == "intramedullary"
    assert types == {"syrinx": "syrinx", "cord_lesion": "cord_signal_change"}


def test_spine_detection_is_deterministic(t2: dict[str, Any]) -> None:
    """Two detections on one registered pair give identical candidates and z-maps."""
    base = array_to_sitk(t2["image"], t2["affine"])
    rp = register_pair(base, _followup(t2["image"], t2["affine"], seed=1), threads=1, seed=1,
                       region="spine", contrast="t2w")
    p = load_params()
    a = detect_registered(rp, "t2w", "spine", p)
    b = detect_registered(rp, "t2w", "spine", p)
    assert json.dumps(a.candidates) == json.dumps(b.candidates)
    assert a.z.tobytes() == b.z.tobytes()
    assert {k: v for k, v in a.parameters.items() if k != "seconds"} == \
        {k: v for k, v in b.parameters.items() if k != "seconds"}


def test_spine_regions_bad_input() -> None:
    flat = sitk.Image([30, 30, 30], sitk.sitkFloat32) + 5.0
    with pytest.raises(ValueError, match="contrast"):
        spine_regions(flat, "pdw")
    with pytest.raises(ValueError, match="intensity contrast"):
        spine_regions(flat, "t2w")
    with pytest.raises(ValueError, match="margin_mm"):
        spine_regions(flat, "t2w", margin_mm=-1.0)


# --------------------------------------------------------------------------- pure functions


def _regions(shape: tuple[int, int, int] = (30, 30, 60), levels: bool = True) -> SpineRegions:
    """A straight cord (radius 4 mm) in a canal (radius 7 mm) along k (= S), 1 mm voxels,
    identity affine (i = R, j = A, k = S); levels: C3 for k < 30, C4 above."""
    ii, jj, kk = np.indices(shape)
    r = np.hypot(ii - 15.0, jj - 15.0)
    cord = r <= 4.0
    canal = r <= 7.0
    lev = np.where(cord, np.where(kk < 30, 3, 4), 0).astype(np.uint8) if levels else None
    cl = np.column_stack([np.full(shape[2], 15.0), np.full(shape[2], 15.0),
                          np.arange(shape[2], dtype=float)])
    return SpineRegions(cord=cord, canal=canal, search=r <= 9.0, levels=lev, centreline_ras=cl,
                        affine=np.eye(4), spacing=(1.0, 1.0, 1.0), margin_mm=2.0)


def _ellipsoid(shape: tuple[int, int, int], c: tuple[float, float, float],
               radii: tuple[float, float, float]) -> np.ndarray:
    g = np.indices(shape).astype(float)
    q = ((g - np.reshape(c, (3, 1, 1, 1))) / np.reshape(radii, (3, 1, 1, 1))) ** 2
    return np.asarray(q.sum(axis=0) <= 1.0)


def test_shape_along_cord_measures_an_ellipsoid() -> None:
    reg = _regions()
    m = _ellipsoid(reg.cord.shape, (15, 15, 30), (2.5, 2.5, 10.0))
    length, width = shape_along_cord(reg, np.argwhere(m), np.array([0.0, 0.0, 1.0]))
    assert length == pytest.approx(20.0, abs=1.0)
    assert width == pytest.approx(5.0, abs=0.8)


def test_is_syrinx_needs_fluid_shape_and_centre() -> None:
    ok = SyrinxEvidence(fluid=0.8, csf_sign=1, length_mm=16.0, width_mm=5.0, offset_mm=0.5,
                        cord_radius_mm=4.5)
    assert is_syrinx(ok, 1)
    assert not is_syrinx(ok, -1)  # change away from CSF
    for bad in ({"fluid": 0.3}, {"fluid": float("nan")}, {"length_mm": 9.0},
                {"offset_mm": 2.5}):
        assert not is_syrinx(dataclasses.replace(ok, **bad), 1), bad


def test_describe_compartment_level_type() -> None:
    reg = _regions()
    shape = reg.cord.shape
    base = np.where(reg.cord, 1.0, np.where(reg.canal, 3.0, 0.5)).astype(np.float32)
    # a central fluid tube C4 -> syrinx
    tube = _ellipsoid(shape, (15, 15, 40), (2.0, 2.0, 9.0))
    fu = np.where(tube, 2.9, base).astype(np.float32)
    d = describe(reg, np.flatnonzero(tube), 1, "t2w", base, fu, float(tube.sum()), 250.0)
    assert (d.type, d.reportable) == ("syrinx", True)
    loc = d.location
    assert (loc["region"], loc["vertebral_level"], loc["compartment"], loc["side"]) == \
        ("spine", "C4", "intramedullary", "midline")
    assert loc["vertebral_level_span"] == "C4"
    # the same tube only moderately bright (oedema-like): cord_signal_change
    fu2 = np.where(tube, 1.6, base).astype(np.float32)
    d2 = describe(reg, np.flatnonzero(tube), 1, "t2w", base, fu2, float(tube.sum()), 250.0)
    assert (d2.type, d2.reportable) == ("cord_signal_change", True)
    # a focal lesion on the right (+x) of the cord at C3, spanning no boundary
    foc = _ellipsoid(shape, (17.5, 15, 20), (1.5, 1.5, 2.0))
    d3 = describe(reg, np.flatnonzero(foc), 1, "t2w", base, np.where(foc, 2.9, base), 20.0, 250.0)
    assert (d3.type, d3.location["vertebral_level"], d3.location["side"]) == \
        ("cord_signal_change", "C3", "right")
    # a long one crossing C3|C4 reports its span
    span = _ellipsoid(shape, (15, 15, 30), (2.0, 2.0, 8.0))
    d4 = describe(reg, np.flatnonzero(span), -1, "t2w", base, base, 100.0, 250.0)
    assert d4.location["vertebral_level_span"] == "C3-C4"
    assert (d4.type, d4.reportable) == ("cord_signal_decrease", False)
    # in the CSF (darker on T2w: new tissue in the sac): reportable only from 250 mm3
    csf = _ellipsoid(shape, (21, 15, 40), (1.0, 1.0, 3.0))
    d5 = describe(reg, np.flatnonzero(csf), -1, "t2w", base, base, 30.0, 250.0)
    assert (d5.type, d5.reportable, d5.location["compartment"]) == \
        ("extramedullary_change", False, "extramedullary_intradural")
    d6 = describe(reg, np.flatnonzero(csf), -1, "t2w", base, base, 300.0, 250.0)
    assert d6.reportable
    d7 = describe(reg, np.flatnonzero(csf), 1, "t2w", base, base, 300.0, 250.0)
    assert (d7.type, d7.reportable) == ("canal_signal_increase", False)
    # in the rim outside the canal
    rim = _ellipsoid(shape, (15, 23, 40), (0.6, 0.6, 3.0))
    assert describe(reg, np.flatnonzero(rim), -1, "t2w", base, base, 10.0, 250.0
                    ).location["compartment"] == "canal_edge"
    # without a level match, or beyond the labelled cord: "unknown", not a guess
    nolev = _regions(levels=False)
    assert describe(nolev, np.flatnonzero(tube), 1, "t2w", base, fu, 100.0, 250.0
                    ).location["vertebral_level"] == "unknown"
    cut = dataclasses.replace(reg, levels=np.where(np.indices(shape)[2] < 30, reg.levels, 0
                                                   ).astype(np.uint8))
    assert describe(cut, np.flatnonzero(tube), 1, "t2w", base, fu, 100.0, 250.0
                    ).location["vertebral_level"] == "unknown"
    # the follow-up's own level match: agreeing -> reported; one level apart -> "unknown"
    same = dataclasses.replace(reg, levels_followup=reg.levels,
                               info={"levels": {"followup": {"agreement": 1.0}}})
    assert describe(same, np.flatnonzero(tube), 1, "t2w", base, fu, 100.0, 250.0
                    ).location["vertebral_level"] == "C4"
    assert reg.levels is not None
    shifted = np.where(reg.levels > 0, reg.levels + 1, 0).astype(np.uint8)
    off = dataclasses.replace(reg, levels_followup=shifted,
                              info={"levels": {"followup": {"agreement": 0.0}}})
    d8 = describe(off, np.flatnonzero(tube), 1, "t2w", base, fu, 100.0, 250.0)
    assert (d8.location["vertebral_level"], d8.location["vertebral_level_span"]) == \
        ("unknown", "unknown")
    assert "ambiguous" in " ".join(d8.reasons)
    with pytest.raises(ValueError, match="contrast"):
        describe(reg, np.flatnonzero(tube), 1, "pdw", base, fu, 100.0, 250.0)
    with pytest.raises(ValueError, match="empty"):
        describe(reg, np.zeros(0, np.int64), 1, "t2w", base, fu, 0.0, 250.0)


def test_fit_regions_refuses_too_little_cord() -> None:
    reg = _regions()
    cov = np.zeros(reg.cord.shape, bool)
    cov[:, :, 28:32] = True  # 4 mm of cord (~200 mm3) covered by both visits
    with pytest.raises(ValueError, match="covered by both visits"):
        fit_regions(reg, cov)
    search, fit, norm = fit_regions(reg, np.ones(reg.cord.shape, bool))
    assert norm.sum() == reg.cord.sum() and search.sum() == fit.sum() == reg.search.sum()
    with pytest.raises(ValueError, match="shape"):
        fit_regions(reg, np.ones((3, 3, 3), bool))

