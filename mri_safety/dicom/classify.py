"""Classify a series by region and contrast from its acquisition parameters.

The rules live in ``configs/sequences.yaml`` (see the comment at its top for
how they are applied); this module only

1. turns a :class:`SeriesGroup`'s header values into *features* (TR/TE/TI in
   ms, flip angle in degrees, code-string sets, slice counts, extents in world
   mm along the DICOM **LPS+** patient axes), and
2. evaluates the rules on them: the highest-priority matching rules decide,
   SeriesDescription/ProtocolName only break ties or stand in for parameters
   the header does not have, and a series that matches nothing is returned as
   ``"unclassified"`` with the reasons (never dropped).

Written by hand because no maintained library classifies MR series from
headers with site-editable rules (dcm2niix/heudiconv leave this to
user-written heuristics on the description, which is exactly what must not
decide here).

Example
-------
>>> from mri_safety.dicom.series import load_series_dir
>>> from mri_safety.dicom.classify import classify_groups
>>> groups = load_series_dir("../shared/data/dicom/patient-positions/HFS")  # doctest: +SKIP
>>> c = classify_groups(groups)[groups[0].key]  # doctest: +SKIP
>>> c.contrast, c.region, c.acq, c.orientation  # doctest: +SKIP
('T1w', 'brain', '2d', 'sagittal')
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mri_safety.config import (
    Conditions,
    ContrastRule,
    RegionRule,
    SequenceRules,
    load_sequence_rules,
)
from mri_safety.dicom.records import SeriesGroup

UNCLASSIFIED = "unclassified"
UNKNOWN_REGION = "unknown"

#: Header attributes whose presence means "the acquisition is described".
PARAMETER_TAGS = (
    "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "ScanningSequence",
    "SequenceVariant", "SequenceName", "PulseSequenceName", "EchoPulseSequence",
    "MRAcquisitionType",
)

#: feature -> (label in reasons, unit)
_LABELS: dict[str, tuple[str, str]] = {
    "tr_ms": ("TR", " ms"), "te_ms": ("TE", " ms"), "ti_ms": ("TI", " ms"),
    "flip_deg": ("flip angle", " deg"), "echo_train_length": ("echo train length", ""),
    "n_volumes": ("volumes", ""), "n_slices": ("slices", ""),
    "series_orientations": ("orientations in series", ""), "matrix_max": ("matrix", ""),
    "fov_min_mm": ("smaller in-plane FOV", " mm"), "fov_max_mm": ("larger in-plane FOV", " mm"),
    "coverage_mm": ("through-plane coverage", " mm"), "lr_mm": ("left-right extent", " mm"),
    "ap_mm": ("anterior-posterior extent", " mm"), "si_mm": ("superior-inferior extent", " mm"),
    "si_over_ap": ("SI/AP extent ratio", ""), "image_type": ("ImageType", ""),
    "scanning_sequence": ("ScanningSequence", ""), "sequence_variant": ("SequenceVariant", ""),
    "scan_options": ("ScanOptions", ""), "sequence_name": ("SequenceName", ""),
    "body_part": ("BodyPartExamined", ""), "acq": ("acquisition", ""),
    "orientation": ("orientation", ""), "diffusion": ("diffusion weighting", ""),
}


@dataclass(frozen=True)
class Classification:
    """What a series is. ``acq`` is ``"2d"`` or ``"3d"``; ``orientation`` is
    ``axial``/``coronal``/``sagittal`` (``unknown`` without orientation);
    ``region`` is a config region or ``"unknown"``; ``contrast`` a config
    contrast or ``"unclassified"``. ``rule``/``region_rule`` name the deciding
    rules (``""`` when none). ``reasons`` quote the header values used.
    ``tie_broken_by_description`` is True when SeriesDescription/ProtocolName
    chose the contrast or the region among tied or candidate rules."""

    region: str
    contrast: str
    post_contrast: bool
    acq: str
    orientation: str
    rule: str
    region_rule: str
    reasons: list[str]
    classified: bool
    tie_broken_by_description: bool = False
    features: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# --------------------------------------------------------------------------- features


def _num(value: Any) -> float | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _codes(value: Any) -> frozenset[str] | None:
    """Multi-valued code string -> upper-case set (``None`` when absent)."""
    if value is None:
        return None
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return frozenset(s.strip().upper() for s in items if s.strip())


def _scanning_sequence(tags: dict[str, Any]) -> frozenset[str] | None:
    codes = _codes(tags.get("ScanningSequence"))
    if codes is not None:
        return codes
    keys = ("EchoPulseSequence", "InversionRecovery", "EchoPlanarPulseSequence")
    if not any(k in tags for k in keys):
        return None
    # Enhanced MR objects describe the same thing with separate attributes.
    out: set[str] = set()
    eps = str(tags.get("EchoPulseSequence", "")).upper()
    out |= {"SPIN": {"SE"}, "GRADIENT": {"GR"}, "BOTH": {"SE", "GR"}}.get(eps, set())
    if str(tags.get("InversionRecovery", "")).upper() == "YES":
        out.add("IR")
    if str(tags.get("EchoPlanarPulseSequence", "")).upper() == "YES":
        out.add("EP")
    return frozenset(out)


def _orientation(normal: np.ndarray | None) -> str:
    if normal is None:
        return "unknown"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _mosaic_tile(tags: dict[str, Any], rows: int, cols: int) -> tuple[int, int, int | None, bool]:
    """(tile rows, tile cols, slices, slices_is_lower_bound) of a Siemens mosaic.

    Tile size from AcquisitionMatrix (frequency rows, frequency columns, phase
    rows, phase columns; two are 0). Without NumberOfImagesInMosaic (a CSA
    private field) the slice count is only bounded: a k x k grid holds more
    than (k-1)^2 slices.
    """
    am = [int(v) for v in (tags.get("AcquisitionMatrix") or []) if _num(v) is not None]
    tr = (am[0] or am[2]) if len(am) == 4 else 0
    tc = (am[1] or am[3]) if len(am) == 4 else 0
    if tr <= 0 or tc <= 0 or rows < tr or cols < tc:
        return rows, cols, None, False
    n = _num(tags.get("NumberOfImagesInMosaic"))
    if n:
        return tr, tc, int(n), False
    k = min(rows // tr, cols // tc)
    return tr, tc, ((k - 1) ** 2 + 1) if k > 1 else 1, k > 1


def series_features(
    group: SeriesGroup, rules: SequenceRules | None = None, series_orientations: int = 1
) -> dict[str, Any]:
    """Header values of ``group`` as rule features (``None`` = not in the header).

    Times in ms, angles in degrees, lengths in world mm; ``lr_mm``/``ap_mm``/
    ``si_mm`` are the extents of the imaged box along the LPS+ axes.
    """
    rules = rules or _default_rules()
    tags = group.tags
    image_type: set[str] = set()
    for rec in group.instances:
        image_type.update(t.upper() for t in rec.image_type)
    f: dict[str, Any] = {
        "tr_ms": _num(tags.get("RepetitionTime")),
        "te_ms": _num(tags.get("EchoTime", tags.get("EffectiveEchoTime"))),
        "ti_ms": _num(tags.get("InversionTime", tags.get("InversionTimes"))),
        "flip_deg": _num(tags.get("FlipAngle")),
        "echo_train_length": _num(tags.get("EchoTrainLength")),
        "image_type": frozenset(image_type),
        "scanning_sequence": _scanning_sequence(tags),
        "sequence_variant": _codes(tags.get("SequenceVariant")),
        "scan_options": _codes(tags.get("ScanOptions")),
        "series_orientations": series_orientations,
    }
    name = tags.get("SequenceName") or tags.get("PulseSequenceName")
    f["sequence_name"] = str(name).upper() if name else None
    bp = re.sub(r"[^A-Z0-9]", "", str(tags.get("BodyPartExamined") or "").upper())
    f["body_part"] = bp or None
    directionality = str(tags.get("DiffusionDirectionality") or "NONE").upper()
    f["diffusion"] = bool(
        any(r.tags.get("DiffusionBValue") is not None for r in group.instances)
        or image_type & {"DIFFUSION", "TRACEW", "TRACE"}
        or directionality not in ("NONE", "")
    )
    f.update(_geometry_features(group))
    mr_acq = str(tags.get("MRAcquisitionType") or "").strip().lower()
    f["acq_source"] = "MRAcquisitionType" if mr_acq in ("2d", "3d") else "geometry"
    if mr_acq in ("2d", "3d"):
        f["acq"] = mr_acq
    n, sp, th = f["n_slices"], f["_spacing"], _num(tags.get("SliceThickness"))
    g3 = rules.geometry_3d
    if f["acq_source"] == "geometry":
        f["acq"] = (
            "3d"
            if n is not None and sp and n >= g3.min_slices and sp <= g3.max_spacing_mm
            and (th is None or sp <= th * g3.max_gap_ratio)
            else "2d"
        )
    return f


def _geometry_features(group: SeriesGroup) -> dict[str, Any]:
    """Slice counts, volumes, matrix, in-plane FOV and extents (world mm, LPS+ axes).

    Slices per volume: Siemens mosaic = tiles (see :func:`_mosaic_tile`);
    enhanced multi-frame = frames / NumberOfTemporalPositions; classic =
    distinct positions along the slice normal, repeats being time points.
    """
    tags, first = group.tags, group.first
    out: dict[str, Any] = dict.fromkeys(
        ("n_slices", "n_volumes", "matrix_max", "fov_min_mm", "fov_max_mm", "coverage_mm",
         "lr_mm", "ap_mm", "si_mm", "si_over_ap", "_spacing"),
    )
    out["n_slices_lower_bound"] = False
    normal = None
    if first.image_orientation is not None:
        v = np.asarray(first.image_orientation, dtype=float)
        n = np.cross(v[:3], v[3:])
        if np.linalg.norm(n) > 0.5:
            normal = n / np.linalg.norm(n)
    out["orientation"] = _orientation(normal)
    out["_normal"] = normal

    rows, cols = first.rows or 0, first.columns or 0
    am = [a for a in (_num(x) for x in (tags.get("AcquisitionMatrix") or [])) if a]
    thickness = _num(tags.get("SliceThickness"))
    spacing_tag = _num(tags.get("SpacingBetweenSlices"))
    plausible = spacing_tag and (not thickness or spacing_tag >= 0.5 * thickness)
    step = spacing_tag if plausible else thickness
    recs = group.instances
    if "MOSAIC" in {t.upper() for t in first.image_type}:
        rows, cols, n_sl, lower = _mosaic_tile(tags, rows, cols)
        out.update(n_slices=n_sl, n_volumes=len(recs), n_slices_lower_bound=lower)
        coverage = n_sl * step if n_sl and step else None
    elif sum(r.n_frames for r in recs) > len(recs):  # enhanced multi-frame
        frames = sum(r.n_frames for r in recs)
        n_t = int(_num(tags.get("NumberOfTemporalPositions")) or 1)
        n_t = n_t if frames % n_t == 0 else 1
        out.update(n_slices=frames // n_t, n_volumes=n_t)
        coverage = frames // n_t * step if step else None
    else:
        coverage = None
        pts = [r.image_position for r in recs if r.image_position is not None]
        if normal is not None and pts:
            d = np.sort(np.asarray(pts, dtype=float) @ normal)
            # Same tolerance as geometry.SAME_POSITION_TOL_MM: repeats = time points.
            positions = d[np.concatenate([[True], np.diff(d) > 0.05])]
            out["n_slices"] = len(positions)
            out["n_volumes"] = max(1, len(recs) // len(positions))
            if len(positions) > 1:
                step = float(np.median(np.diff(positions)))
                out["_spacing"] = step
            coverage = float(positions[-1] - positions[0]) + (step or thickness or 0.0)
    out["_spacing"] = out["_spacing"] or step
    out["matrix_max"] = max(am) if am else (max(rows, cols) or None)
    ps = first.pixel_spacing
    if ps and rows and cols:
        width, height = cols * ps[1], rows * ps[0]  # along row cosine, along column cosine
        out["fov_min_mm"], out["fov_max_mm"] = min(width, height), max(width, height)
        out["coverage_mm"] = coverage
        if normal is not None and first.image_orientation is not None and coverage:
            v = np.abs(np.asarray(first.image_orientation, dtype=float))
            ext = v[:3] * width + v[3:] * height + np.abs(normal) * coverage
            out["lr_mm"], out["ap_mm"], out["si_mm"] = (float(e) for e in ext)
            out["si_over_ap"] = float(ext[2] / ext[1]) if ext[1] > 0 else None
    else:
        out["coverage_mm"] = coverage
    return out


# --------------------------------------------------------------------------- rules


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, frozenset | set):
        return "\\".join(sorted(value)) or "(empty)"
    return str(value)


def _check(key: str, want: Any, feats: dict[str, Any]) -> tuple[str, str]:
    """One condition -> (``ok``/``fail``/``unknown``, human-readable note)."""
    base, _, op = key.rpartition("_")
    if op in ("any", "all", "none") and base in _LABELS:
        label = _LABELS[base][0]
        have = feats.get(base)
        if have is None:
            return "unknown", f"{label} absent"
        wanted = [str(w).upper() for w in want]
        hits = [w for w in wanted if (w in have if isinstance(have, str) else w in have)]
        ok = {"any": bool(hits), "all": len(hits) == len(wanted), "none": not hits}[op]
        verb = {"any": "has one of", "all": "has all of", "none": "has none of"}[op]
        verb = verb if ok else "fails " + verb
        return ("ok" if ok else "fail"), f"{label} {_fmt(have)} {verb} {wanted}"
    label, unit = _LABELS.get(key, (key, ""))
    have = feats.get(key)
    if have is None:
        return "unknown", f"{label} absent"
    if isinstance(want, tuple):
        lo, hi = want
        ok = (lo is None or have >= lo) and (hi is None or have <= hi)
        lower = key in ("n_slices", "coverage_mm") and feats.get("n_slices_lower_bound")
        bound = ">= " if lower else ""
        lo_s = "-" if lo is None else _fmt(float(lo))
        hi_s = "-" if hi is None else _fmt(float(hi))
        rng = f"[{lo_s}, {hi_s}]"
        verb = "in" if ok else "not in"
        return ("ok" if ok else "fail"), f"{label} {bound}{_fmt(have)}{unit} {verb} {rng}"
    ok = str(have).lower() == str(want).lower()
    return ("ok" if ok else "fail"), f"{label} {_fmt(have)}{'' if ok else ' is not ' + str(want)}"


def _evaluate(cond: Conditions, feats: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    """Rule status (``ok``/``fail``/``unknown``), notes of the passed conditions
    and notes of the failed or unknown ones."""
    passed: list[str] = []
    other: list[str] = []
    statuses: set[str] = set()
    for key, want in cond.given().items():
        status, note = _check(key, want, feats)
        statuses.add(status)
        (passed if status == "ok" else other).append(note)
    status = "fail" if "fail" in statuses else "unknown" if "unknown" in statuses else "ok"
    return status, passed, other


def _pick_by_description(
    options: Sequence[str], patterns: dict[str, list[str]], text: str
) -> tuple[str, str] | None:
    """First outcome (in ``patterns`` order) among ``options`` whose pattern is in ``text``."""
    for outcome, pats in patterns.items():
        if outcome not in options:
            continue
        for p in pats:
            if re.search(p, text, flags=re.IGNORECASE):
                return outcome, p
    return None


@dataclass
class _Decision:
    outcome: str | None
    rule: str
    reasons: list[str]
    by_description: bool = False


def _decide(
    rules: Sequence[ContrastRule] | Sequence[RegionRule],
    outcome_of: Callable[[Any], str],
    feats: dict[str, Any],
    patterns: dict[str, list[str]],
    text: str,
    kind: str,
    fallback_ok: bool,
) -> _Decision:
    """Apply the rules (semantics in configs/sequences.yaml). ``fallback_ok``:
    the description may choose among incomplete candidates (only when the
    deciding parameters are absent from the header)."""
    results = [(r, *_evaluate(r.when, feats)) for r in rules]
    matched = [(r, passed) for r, status, passed, _ in results if status == "ok"]
    if matched:
        top = max(r.priority for r, _ in matched)
        best = [(r, passed) for r, passed in matched if r.priority == top]
        outcomes = list(dict.fromkeys(outcome_of(r) for r, _ in best))
        rule, passed = best[0]
        reasons = [f"{kind} rule {rule.name!r}: " + "; ".join(passed)]
        if len(outcomes) == 1:
            return _Decision(outcomes[0], rule.name, reasons)
        tie = ", ".join(f"{r.name!r} -> {outcome_of(r)}" for r, _ in best)
        pick = _pick_by_description(outcomes, patterns, text) if text else None
        if pick:
            rule, passed = next((r, p) for r, p in best if outcome_of(r) == pick[0])
            return _Decision(pick[0], rule.name, [
                f"{kind} rules tie at priority {top}: {tie}",
                f"{kind} rule {rule.name!r}: " + "; ".join(passed),
                f"tie broken by description matching {pick[1]!r}",
            ], True)
        return _Decision(outcomes[0], rule.name, [
            f"{kind} rules tie at priority {top}: {tie}; description does not decide, "
            "first listed rule wins", *reasons,
        ])

    candidates = [(r, other) for r, status, _, other in results if status == "unknown"]
    reasons = [f"no {kind} rule matched the acquisition parameters"]
    if candidates:
        options = list(dict.fromkeys(outcome_of(r) for r, _ in candidates))
        missing = sorted({n for _, other in candidates for n in other if n.endswith("absent")})
        reasons.append(f"not excluded but incomplete ({', '.join(missing)}): {', '.join(options)}")
        pick = _pick_by_description(options, patterns, text) if text and fallback_ok else None
        if pick:
            rule = next(r for r, _ in candidates if outcome_of(r) == pick[0])
            reasons.append(
                f"chosen by description matching {pick[1]!r} (candidate rule {rule.name!r})"
            )
            return _Decision(pick[0], "description", reasons, True)
        if not fallback_ok:
            reasons.append("the description is not used: the header has acquisition parameters")
        else:
            reasons.append("description does not decide" if text else "no description to decide")
    if not fallback_ok or not candidates:
        # Nearest = fewest failed, then most passed conditions.
        fails = sorted(
            ((r, other, len(passed)) for r, status, passed, other in results if status == "fail"),
            key=lambda t: (len(t[1]), -t[2]),
        )
        for r, other, _ in fails[:2]:
            reasons.append(f"nearest {kind} rule {r.name!r} failed: " + "; ".join(other))
    return _Decision(None, "", reasons)


# --------------------------------------------------------------------------- public API


@functools.lru_cache(maxsize=1)
def _default_rules() -> SequenceRules:
    return load_sequence_rules()


def _post_contrast(tags: dict[str, Any], rules: SequenceRules) -> tuple[bool, str]:
    negative = {v.strip().upper() for v in rules.post_contrast_negative_values}
    for kw in rules.post_contrast_tags:
        value = tags.get(kw)
        if value is None:
            continue
        text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
        num = _num(value)
        if text.strip().upper() not in negative and not (num is not None and num == 0.0):
            return True, f"post-contrast: {kw} = {text.strip()!r}"
    return False, ""


def classify(
    group: SeriesGroup,
    rules: SequenceRules | None = None,
    *,
    series_orientations: int = 1,
    use_description: bool = True,
) -> Classification:
    """Classify one series group.

    ``series_orientations`` is the number of slice orientations in the source
    series (:func:`classify_groups` counts them across split groups; a 3-plane
    localiser has 3). ``use_description=False`` classifies from parameters
    only, as if SeriesDescription and ProtocolName were blank.
    """
    rules = rules or _default_rules()
    feats = series_features(group, rules, series_orientations)
    tags = group.tags
    text = ""
    if use_description:
        text = " ".join(str(tags.get(k) or "") for k in ("SeriesDescription", "ProtocolName"))
        text = text.strip()

    no_params = not any(tags.get(k) not in (None, "") for k in PARAMETER_TAGS)
    contrast = _decide(rules.contrast_rules, lambda r: r.contrast, feats,
                       rules.description_patterns, text, "contrast", no_params)
    region = _decide(rules.region_rules, lambda r: r.region, feats,
                     rules.region_description_patterns, text, "region", feats["body_part"] is None)
    reasons = list(contrast.reasons)
    if no_params:
        reasons.insert(0, "no acquisition parameters (none of " + ", ".join(PARAMETER_TAGS) + ")")
    reasons += region.reasons
    post, why = _post_contrast(tags, rules)
    if why:
        reasons.append(why)
    reasons.append(
        f"acq {feats['acq']} from {feats['acq_source']}"
        + ("" if feats["acq_source"] == "MRAcquisitionType"
           else f" ({feats['n_slices']} slices, spacing {_fmt(feats['_spacing'])} mm)")
    )
    if feats["_normal"] is not None:
        n = feats["_normal"]
        reasons.append(
            f"orientation {feats['orientation']} "
            f"(slice normal LPS {n[0]:.3f}, {n[1]:.3f}, {n[2]:.3f})"
        )
    return Classification(
        region=region.outcome or UNKNOWN_REGION,
        contrast=contrast.outcome or UNCLASSIFIED,
        post_contrast=post,
        acq=feats["acq"],
        orientation=feats["orientation"],
        rule=contrast.rule,
        region_rule=region.rule,
        reasons=reasons,
        classified=contrast.outcome is not None,
        tie_broken_by_description=contrast.by_description or region.by_description,
        features={k: v for k, v in feats.items() if not k.startswith("_")},
    )


def classify_groups(
    groups: Iterable[SeriesGroup],
    rules: SequenceRules | None = None,
    *,
    use_description: bool = True,
) -> dict[str, Classification]:
    """Classify every group; returns ``{group.key: Classification}``.

    Counts the slice orientations of all groups of one SeriesInstanceUID first,
    so the split planes of a 3-plane localiser are recognised as such.
    """
    groups = list(groups)
    rules = rules or _default_rules()
    orientations: dict[str, set[str]] = defaultdict(set)
    for g in groups:
        iop = g.first.image_orientation
        if iop is not None:
            n = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
            orientations[g.series_instance_uid].add(_orientation(n))
    return {
        g.key: classify(
            g, rules,
            series_orientations=max(1, len(orientations[g.series_instance_uid])),
            use_description=use_description,
        )
        for g in groups
    }
