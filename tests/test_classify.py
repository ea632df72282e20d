"""Series classification: constructed headers with known truth, then the real
series in ../shared/data/dicom (ground truth checked against their headers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import need_data

from mri_safety.config import CONFIG_DIR, load_sequence_rules
from mri_safety.dicom.classify import UNCLASSIFIED, classify, classify_groups
from mri_safety.dicom.records import InstanceRecord, SeriesGroup
from mri_safety.dicom.series import load_series_dir

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def make_group(
    tags: dict[str, Any],
    *,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    iop: tuple[float, ...] = AXIAL,
    n_slices: int = 20,
    spacing: float = 5.0,
    n_volumes: int = 1,
    rows: int = 256,
    cols: int = 256,
    pixel: float = 0.9,
    series_uid: str = "1.2.3.4",
    description: str = "",
) -> SeriesGroup:
    """A classic (one slice per file) series with the given header values."""
    row_dir, col_dir = iop[:3], iop[3:]
    normal = (
        row_dir[1] * col_dir[2] - row_dir[2] * col_dir[1],
        row_dir[2] * col_dir[0] - row_dir[0] * col_dir[2],
        row_dir[0] * col_dir[1] - row_dir[1] * col_dir[0],
    )
    all_tags = {"SliceThickness": spacing, **tags}
    if description:
        all_tags["SeriesDescription"] = all_tags["ProtocolName"] = description
    recs = []
    for t in range(n_volumes):
        for k in range(n_slices):
            i = t * n_slices + k
            recs.append(InstanceRecord(
                path=f"/synthetic/{series_uid}/{i:04d}.dcm", sop_instance_uid=f"{series_uid}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.4", series_instance_uid=series_uid,
                study_instance_uid="1.2.3", patient_id="P1", study_date="20240101",
                study_time="120000", series_number=1, instance_number=i + 1,
                acquisition_number=t + 1, echo_number=1, n_frames=1, rows=rows, columns=cols,
                pixel_spacing=(pixel, pixel), image_orientation=iop,
                image_position=tuple(-100.0 + k * spacing * c for c in normal),  # type: ignore[arg-type]
                image_type=image_type, transfer_syntax_uid="1.2.840.10008.1.2.1",
                has_pixel_data=True, tags=all_tags,
            ))
    return SeriesGroup(key=f"k{series_uid}", series_instance_uid=series_uid,
                       study_instance_uid="1.2.3", patient_id="P1", study_date="20240101",
                       instances=recs)


def se(tr: float, te: float, **extra: Any) -> dict[str, Any]:
    return {"ScanningSequence": "SE", "SequenceVariant": "SK\\SP", "MRAcquisitionType": "2D",
            "RepetitionTime": tr, "EchoTime": te, "FlipAngle": 90.0, **extra}


def gre(tr: float, te: float, flip: float, acq: str = "2D", **extra: Any) -> dict[str, Any]:
    return {"ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": acq,
            "RepetitionTime": tr, "EchoTime": te, "FlipAngle": flip, **extra}


# --------------------------------------------------------------------------- contrasts

CASES = [
    ("t1w-se", make_group(se(550, 12)), "T1w", "t1w-spin-echo"),
    ("t1w-spgr-2d", make_group(gre(300, 2.46, 80)), "T1w", "t1w-gradient-echo"),
    ("t1w-mprage", make_group(
        {**gre(2300, 2.9, 9, "3D"), "ScanningSequence": "GR\\IR", "InversionTime": 900.0},
        n_slices=176, spacing=1.0, pixel=1.0), "T1w", "t1w-ir"),
    ("t2w-tse", make_group(se(5000, 100, EchoTrainLength=15)), "T2w", "t2w-spin-echo"),
    ("flair", make_group(se(9000, 120, ScanningSequence="SE\\IR", InversionTime=2500.0)),
     "FLAIR", "flair-ir-long-ti"),
    ("pd", make_group(se(3000, 12)), "PD", "pd-spin-echo"),
    ("t2starw-2d", make_group(gre(700, 20, 20)), "T2starw", "t2starw-gradient-echo"),
    ("swi-image-type", make_group(gre(28, 20, 15, "3D"), image_type=("ORIGINAL", "PRIMARY", "M",
                                                                   "SWI", "NORM")),
     "SWI", "swi-image-type"),
    ("swi-mnip", make_group(gre(28, 20, 15, "3D"), image_type=("DERIVED", "PRIMARY", "MNIP")),
     "SWI", "swi-image-type"),
    ("dwi-bvalue", make_group({**se(6000, 80), "ScanningSequence": "EP",
                               "DiffusionBValue": 1000.0}, n_volumes=3), "DWI", "dwi-diffusion"),
    ("dwi-tracew", make_group({"ScanningSequence": "EP", "EchoTime": 80.0,
                               "RepetitionTime": 6000.0},
                              image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW")),
     "DWI", "dwi-diffusion"),
    ("adc", make_group({"ScanningSequence": "EP", "EchoTime": 80.0},
                       image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
     "ADC", "adc-image-type"),
    ("bold", make_group({"ScanningSequence": "EP", "SequenceVariant": "SK", "EchoTime": 30.0,
                         "RepetitionTime": 2000.0, "FlipAngle": 77.0, "MRAcquisitionType": "2D"},
                        n_volumes=30, n_slices=36, spacing=3.0, rows=64, cols=64, pixel=3.0),
     "bold", "bold-gre-epi"),
    ("localizer-image-type", make_group(gre(8.6, 4, 20), image_type=("ORIGINAL", "PRIMARY",
                                                                    "LOCALIZER")),
     "localizer", "localizer-image-type"),
    ("localizer-low-matrix", make_group(gre(5, 2, 20), n_slices=3, rows=64, cols=64, pixel=4.0),
     "localizer", "localizer-low-matrix"),
    ("enhanced-mprage", make_group({"EchoPulseSequence": "GRADIENT", "InversionRecovery": "YES",
                                    "EchoPlanarPulseSequence": "NO", "RepetitionTime": 1800.0,
                                    "EchoTime": 2.41, "InversionTime": 900.0, "FlipAngle": 9.0,
                                    "MRAcquisitionType": "3D"}), "T1w", "t1w-ir"),
]


@pytest.mark.parametrize("name,group,contrast,rule", CASES, ids=[c[0] for c in CASES])
def test_contrast_from_parameters_only(name: str, group: SeriesGroup, contrast: str,
                                       rule: str) -> None:
    c = classify(group, use_description=False)
    assert (c.contrast, c.rule, c.classified) == (contrast, rule, True), c.reasons
    assert not c.tie_broken_by_description
    assert any(rule in r for r in c.reasons)


def test_reasons_quote_header_values() -> None:
    c = classify(make_group(gre(300, 2.46, 80)), use_description=False)
    assert "TR 300 ms in [-, 800]" in c.reasons[0] and "TE 2.46 ms in [-, 10]" in c.reasons[0]


def test_description_never_overrides_parameters() -> None:
    c = classify(make_group(se(5000, 100), description="T1_MPRAGE_sag"))
    assert c.contrast == "T2w" and not c.tie_broken_by_description


def test_unmatched_is_unclassified_with_reasons() -> None:
    # Long TR, intermediate TE 45 ms: neither PD (TE <= 30) nor T2w (TE >= 60).
    c = classify(make_group(se(3000, 45), description="ax_t2_tse"))
    assert (c.contrast, c.classified, c.rule) == (UNCLASSIFIED, False, "")
    nearest = [r for r in c.reasons if r.startswith("nearest contrast rule")]
    assert "'pd-spin-echo' failed: TE 45 ms not in [-, 30]" in nearest[0], c.reasons
    assert "'t2w-spin-echo' failed: TE 45 ms not in [60, -]" in nearest[1], c.reasons
    # Parameters are present, so a description cannot fill in, even one naming a
    # contrast whose rule only needs a parameter this header lacks (SequenceName).
    swi = classify(make_group(se(3000, 45), description="swi"))
    assert swi.contrast == UNCLASSIFIED and not swi.tie_broken_by_description


def test_absent_parameters_use_description() -> None:
    derived = ("DERIVED", "SECONDARY")
    bare = classify(make_group({}, image_type=derived), use_description=True)
    assert bare.contrast == UNCLASSIFIED and "no acquisition parameters" in bare.reasons[0]
    named = classify(make_group({}, image_type=derived, description="anat-T1w"))
    assert (named.contrast, named.classified) == ("T1w", True)
    assert named.tie_broken_by_description and named.rule == "description"
    flair = classify(make_group({}, image_type=derived, description="t2_flair_tra"))
    assert flair.contrast == "FLAIR"  # FLAIR patterns are tried before T2w


def test_tie_broken_by_description() -> None:
    # 3D GRE, long TE, low flip: both t2starw-gradient-echo and swi-3d-gradient-echo match.
    params = gre(30, 20, 15, "3D")
    plain = classify(make_group(params, n_slices=60, spacing=2.0))
    assert plain.contrast == "T2starw" and not plain.tie_broken_by_description
    assert any("tie" in r and "first listed" in r for r in plain.reasons)
    swi = classify(make_group(params, n_slices=60, spacing=2.0, description="SWI_Images"))
    assert (swi.contrast, swi.rule, swi.tie_broken_by_description) == (
        "SWI", "swi-3d-gradient-echo", True)
    t2s = classify(make_group(params, n_slices=60, spacing=2.0, description="t2star_gre"))
    assert (t2s.contrast, t2s.tie_broken_by_description) == ("T2starw", True)


def test_three_plane_localizer_split_groups() -> None:
    groups = [make_group(gre(8.6, 4.0, 20), iop=iop, n_slices=3, series_uid="1.9.9",
                         spacing=7.0) for iop in (AXIAL, CORONAL, SAGITTAL)]
    for g, iop in zip(groups, ("a", "c", "s"), strict=True):
        g.key = f"loc-{iop}"
    out = classify_groups(groups, use_description=False)
    assert {c.contrast for c in out.values()} == {"localizer"}
    assert {c.orientation for c in out.values()} == {"axial", "coronal", "sagittal"}
    # One plane alone is a short-TR GRE: T1w by parameters. So the orientation
    # count across split groups is what makes it a localiser.
    assert classify(groups[0], use_description=False).contrast == "T1w"


@pytest.mark.parametrize("agent,expected", [
    ({"ContrastBolusAgent": "GADOVIST"}, True),
    ({"ContrastBolusAgent": "Gd-DOTA", "ContrastBolusVolume": 15.0}, True),
    ({"ContrastBolusRoute": "IV"}, True),
    ({"ContrastBolusAgent": ""}, False),
    ({"ContrastBolusAgent": "None"}, False),
    ({"ContrastBolusVolume": 0.0}, False),
    ({}, False),
])
def test_post_contrast(agent: dict[str, Any], expected: bool) -> None:
    c = classify(make_group({**se(550, 12), **agent}), use_description=False)
    assert c.post_contrast is expected and c.contrast == "T1w"


def test_acq_from_geometry_without_mracquisitiontype() -> None:
    thin = make_group({"RepetitionTime": 8.0, "EchoTime": 3.0}, n_slices=120, spacing=1.0)
    thick = make_group({"RepetitionTime": 8.0, "EchoTime": 3.0}, n_slices=24, spacing=5.0)
    assert classify(thin).acq == "3d" and classify(thick).acq == "2d"
    declared = make_group(gre(8.0, 3.0, 10, "3D"), n_slices=24, spacing=5.0)
    assert classify(declared).acq == "3d"


@pytest.mark.parametrize("iop,expected", [
    (AXIAL, "axial"), (CORONAL, "coronal"), (SAGITTAL, "sagittal"),
    ((0.0, 0.9659, -0.2588, 0.0, 0.2588, 0.9659), "sagittal"),  # 15 deg oblique sagittal
])
def test_orientation(iop: tuple[float, ...], expected: str) -> None:
    assert classify(make_group(se(550, 12), iop=iop)).orientation == expected


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize("body_part,region", [
    ("BRAIN", "brain"), ("head", "brain"), ("CSPINE", "cervical"), ("C-Spine", "cervical"),
    ("TSPINE", "thoracic"), ("lspine", "lumbar"), ("L SPINE", "lumbar"), ("SPINE", "spine"),
    ("KNEE", "other"),
])
def test_region_from_body_part(body_part: str, region: str) -> None:
    # Small axial FOV so geometry alone would not say "brain".
    g = make_group({**se(550, 12), "BodyPartExamined": body_part}, rows=160, cols=160, pixel=1.0)
    assert classify(g).region == region


def test_region_spine_from_sagittal_geometry() -> None:
    # Sagittal: 15 slices x 3 mm = 45 mm left-right; FOV 320 mm (SI) x 200 mm (AP).
    g = make_group(se(3500, 100), iop=SAGITTAL, n_slices=15, spacing=3.0, rows=320, cols=200,
                   pixel=1.0)
    c = classify(g, use_description=False)
    assert (c.region, c.region_rule) == ("spine", "geometry-sagittal-spine"), c.reasons
    # Same slab with the description saying cervical does not change a
    # parameter-based region.
    named = classify(make_group(se(3500, 100), iop=SAGITTAL, n_slices=15, spacing=3.0, rows=320,
                                cols=200, pixel=1.0, description="sag T2 C-spine"))
    assert named.region == "spine" and not named.tie_broken_by_description


def test_region_brain_and_unknown_from_geometry() -> None:
    head = make_group(se(5000, 100), n_slices=30, spacing=5.0, rows=256, cols=256, pixel=0.9)
    assert classify(head).region == "brain"
    small = make_group(se(5000, 100), n_slices=12, spacing=4.0, rows=160, cols=160, pixel=1.0)
    c = classify(small)
    assert (c.region, c.region_rule) == ("unknown", "")
    # BodyPartExamined absent and geometry undecided: the description may fill in.
    named = classify(make_group(se(5000, 100), n_slices=12, spacing=4.0, rows=160, cols=160,
                                pixel=1.0, description="ax T2 C-spine"))
    assert (named.region, named.contrast, named.tie_broken_by_description) == (
        "cervical", "T2w", True)


# --------------------------------------------------------------------------- YAML drives it


def test_site_edit_changes_outcome(tmp_path: Path) -> None:
    """A site that calls TE >= 40 ms T2-weighted edits only the YAML."""
    data = yaml.safe_load((CONFIG_DIR / "sequences.yaml").read_text())
    for rule in data["contrast_rules"]:
        if rule["name"] == "t2w-spin-echo":
            rule["when"]["te_ms"] = [40, None]
    edited = tmp_path / "sequences.yaml"
    edited.write_text(yaml.safe_dump(data))
    g = make_group(se(3000, 45))
    assert classify(g).contrast == UNCLASSIFIED
    assert classify(g, load_sequence_rules(edited)).contrast == "T2w"


# --------------------------------------------------------------------------- real data

REAL = [
    ("patient-positions", "T1w", "brain", "2d", "sagittal", 4),
    ("siemens-xa30-enhanced", "T1w", "brain", "3d", "sagittal", 2),
    ("ge-siemens-epi", "bold", "brain", "2d", "axial", 8),
    ("siemens-mosaic-orientation", "bold", "brain", "2d", None, 19),
    ("transfer-syntaxes", "bold", "brain", "2d", "axial", 1),
]


@pytest.mark.parametrize("folder,contrast,region,acq,orientation,n_groups", REAL,
                         ids=[r[0] for r in REAL])
def test_real_series_from_parameters(folder: str, contrast: str, region: str, acq: str,
                                     orientation: str | None, n_groups: int) -> None:
    groups = load_series_dir(need_data("dicom", folder))
    assert len(groups) == n_groups
    for blank in (True, False):
        out = classify_groups(groups, use_description=not blank)
        for g in groups:
            c = out[g.key]
            assert (c.contrast, c.region, c.acq, c.classified) == (contrast, region, acq, True), (
                g.source_dir, c.reasons)
            assert not c.tie_broken_by_description and not c.post_contrast
            if orientation:
                assert c.orientation == orientation
            else:  # ax/cor/sag folders
                assert c.orientation.startswith(Path(g.source_dir).parent.name)


def test_real_enhanced_parameters_from_functional_groups() -> None:
    groups = load_series_dir(need_data("dicom", "siemens-xa30-enhanced"))
    c = classify(groups[0], use_description=False)
    f = c.features
    assert (f["tr_ms"], f["te_ms"], f["ti_ms"], f["flip_deg"]) == (1800.0, 2.41, 900.0, 9.0)
    assert f["scanning_sequence"] == {"GR", "IR"} and (f["n_slices"], f["n_volumes"]) == (96, 1)
    assert c.rule == "t1w-ir"


def test_real_mosaic_counts() -> None:
    groups = load_series_dir(need_data("dicom", "ge-siemens-epi"))
    feats = {Path(g.source_dir).parent.name + "/" + Path(g.source_dir).name:
             classify(g).features for g in groups}
    ge = feats["20180918GE/mr_0004"]
    assert (ge["n_slices"], ge["n_volumes"], ge["te_ms"]) == (15, 10, 30.0)
    si = feats["20180918Si/mr_0003"]
    assert si["n_volumes"] == 2 and si["n_slices_lower_bound"] and si["te_ms"] == 50.0


def test_real_nifti2dicom_export_has_no_parameters() -> None:
    """brain-t1-3d (nifti2dicom, ImageType DERIVED\\SECONDARY, no TR/TE/sequence
    tags): honestly unclassified from parameters; its description gives T1w."""
    groups = load_series_dir(need_data("dicom", "brain-t1-3d"))
    assert len(groups) == 1
    blank = classify(groups[0], use_description=False)
    assert (blank.contrast, blank.classified) == (UNCLASSIFIED, False)
    assert blank.reasons[0].startswith("no acquisition parameters")
    assert (blank.region, blank.region_rule, blank.acq) == ("brain", "geometry-head-sized", "3d")
    named = classify(groups[0])
    assert groups[0].tags["SeriesDescription"] == "anat-T1w"
    assert (named.contrast, named.classified) == ("T1w", True)
    assert named.tie_broken_by_description
    assert named.region == "brain" and named.acq == "3d" and named.orientation == "axial"
