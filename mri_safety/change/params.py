"""Detection parameters, validated from ``configs/detection.yaml`` (pydantic v2).

All lengths are world mm, volumes mm3, z in units of the modelled noise SD.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "configs" / "detection.yaml"


class DetectParams(BaseModel):
    """Parameters of :func:`mri_safety.change.compare.detect_pair`.

    review_fwe_alpha: expected number of pure-noise clusters per pair that may
        reach the review threshold; the threshold is the one-sided Gaussian
        quantile ``z_review = Phi^-1(1 - alpha / n_resels)`` (Bonferroni over
        resolution elements of the search region), so it follows from the noise
        model and the search volume, never from the test cases.
    z_low: hysteresis extent threshold on the signed z (per sign).
    z_seed: a component is kept as a candidate only if its peak reaches this.
    min_volume_mm3: candidates smaller than this are discarded.
    min_resels: candidates must also span this many resolution elements (product of
        the effective resolution after profile matching, each axis at least the
        smoothing FWHM).
    smooth_mm: Gaussian sigma (mm) applied to both visits before subtracting.
    edge_misregistration_mm: residual misregistration (mm) of the edge noise
        term; ``None`` estimates it from the difference image itself.
    hyper_ratio: for FLAIR/T2w, the follow-up voxel must exceed this multiple
        of the brain median intensity (lesion-like, not only brighter); for
        T2*w/SWI a decrease must bring it below 1 / hyper_ratio (a hypointense focus,
        not only darker).
    local_reference_mm: FLAIR/T2w/PD/DWI: the tissue the ``hyper_ratio`` multiplies is
        the local normal tissue, a Gaussian mean of this sigma (mm), where it is
        darker than the tissue median (never brighter);
        0 = the tissue median everywhere (``zmap.lesion_level``).
    normal_range_pct: for contrasts without a lesion-likeness rule (T1w, SWI, ...), a
        change counts only where the baseline lies within the [pct, 100 - pct]
        percentiles of baseline tissue (not a vessel, fat or CSF already).
    extra_axial_min_volume_mm3: a candidate mostly outside the brain parenchyma (but
        inside the intracranial mask) is flagged only from this volume on (a
        collection worth reporting; vessels and sinuses with variable flow are smaller).
    t2_dark_min_diameter_mm: a FLAIR/T2w/PD decrease that makes a new hypointense
        focus (``compare.new_dark_focus``) is flagged when its size (its signal
        deficit summed over the candidate, divided by its deepest point:
        ``compare.deficit_volume``) reaches the volume of a sphere of this
        diameter (world mm); beside the ventricles it must also reach this far
        into the parenchyma (``compare.focus_reach_mm``). FLAIR and T2w are the
        insensitive sequences for small blood products: microbleeds, commonly
        2-5 mm (Greenberg et al., Lancet Neurol 2009;8:165-74), are found by
        T2*w/SWI; on FLAIR alone a dark dot of that size is as often a
        perivascular space or a vessel.
    dipole_mm / dipole_penalty: a candidate with an opposite-sign candidate within
        ``dipole_mm`` (the pattern of a local shift) loses ``dipole_penalty`` z of evidence.
    edge_penalty: evidence z removed when most of a candidate's modelled noise comes
        from baseline intensity edges (partial volume / misregistration).
    extra_contrast_bonus / extra_contrast_z: evidence added for each extra
        contrast whose mean z inside the candidate reaches ``extra_contrast_z``.
    registration_threads, seed: determinism of registration.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    review_fwe_alpha: float = Field(0.5, gt=0, lt=100)
    z_low: float = Field(3.0, gt=0)
    z_seed: float = Field(4.0, gt=0)
    min_volume_mm3: float = Field(8.0, ge=0)
    min_resels: float = Field(0.5, ge=0)
    smooth_mm: float = Field(1.0, ge=0)
    edge_misregistration_mm: float | None = Field(None, ge=0)
    hyper_ratio: float = Field(1.2, gt=0)
    local_reference_mm: float = Field(5.0, ge=0)
    normal_range_pct: float = Field(2.0, ge=0, lt=50)
    extra_axial_min_volume_mm3: float = Field(250.0, ge=0)
    t2_dark_min_diameter_mm: float = Field(5.0, ge=0)
    dipole_mm: float = Field(3.0, ge=0)
    dipole_penalty: float = Field(2.0, ge=0)
    edge_penalty: float = Field(1.0, ge=0)
    extra_contrast_bonus: float = Field(1.0, ge=0)
    extra_contrast_z: float = Field(2.0, gt=0)
    registration_threads: int = Field(2, ge=1)
    seed: int = 20261125


def load_params(path: Path | None = None, **overrides: object) -> DetectParams:
    """Read ``path`` (default ``configs/detection.yaml``) and apply ``overrides``.

    Raises ``ValueError`` naming the file and the offending key.
    """
    p = path or DEFAULT_FILE
    data: dict[str, object] = {}
    if p.exists():
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: invalid YAML ({e})") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: expected a mapping of detection parameters")
        data.update(loaded)
    elif path is not None:
        raise ValueError(f"{p}: detection config not found")
    data.update(overrides)
    try:
        return DetectParams.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{p}: invalid detection parameters: {e}") from e
