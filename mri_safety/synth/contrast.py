"""MR contrasts rendered from tissue fractions (plausible relative intensities).

Intensities are in arbitrary units relative to white matter on a T1w image
(WM ~ 1); ADC is in 10^-3 mm^2/s. ``render`` mixes class means by tissue
fraction (partial volume at edges), multiplies by the real T1's within-class
texture and then mixes in abnormality components by their fraction maps.
b1000 is computed physically from b0 and ADC: S = S0 * exp(-b * ADC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mri_safety.synth.anatomy import Anatomy

CONTRASTS: tuple[str, ...] = ("T1w", "T1w_post", "T2w", "FLAIR", "T2starw", "DWI_b0", "DWI_b1000",
                              "ADC")

#: Class means per contrast, order = anatomy.CLASSES
#: (background, csf, gm, wm, skull, scalp, fat, vessel). T1w comes from the real image.
TISSUE_MEANS: dict[str, tuple[float, ...]] = {
    "T2w": (0.0, 1.60, 0.85, 0.60, 0.08, 0.50, 0.85, 0.15),
    "FLAIR": (0.0, 0.10, 0.95, 0.68, 0.06, 0.45, 0.60, 0.12),
    "T2starw": (0.0, 1.10, 0.80, 0.66, 0.05, 0.45, 0.70, 0.20),
    "DWI_b0": (0.0, 1.70, 0.95, 0.78, 0.05, 0.30, 0.10, 0.20),
    "ADC": (0.0, 3.00, 0.85, 0.72, 0.00, 1.00, 0.20, 1.50),
}
#: Exponent applied to the T1 texture per contrast (0 = no texture).
TEXTURE_GAIN: dict[str, float] = {"T1w": 1.0, "T1w_post": 1.0, "T2w": 0.6, "FLAIR": 0.6,
                                  "T2starw": 0.6, "DWI_b0": 0.5, "ADC": 0.2}


@dataclass
class Component:
    """An abnormality mixed into the anatomy in subject space.

    ``fraction``: (X, Y, Z) float32 in [0, 1] (partial volume). ``values``:
    target intensity per contrast (units as in ``TISSUE_MEANS``); a contrast
    missing from ``values`` is unchanged by this component.
    """

    fraction: np.ndarray
    values: dict[str, float]


def _tissue_means(anat: Anatomy, contrast: str) -> np.ndarray:
    if contrast == "T1w":
        return np.asarray(anat.t1_means, np.float32)
    if contrast == "T1w_post":
        m = np.asarray(anat.t1_means, np.float32).copy()
        m[7] = 1.9  # vessels / sinuses enhance
        m[5] *= 1.1  # mucosa, scalp vessels
        return m
    return np.asarray(TISSUE_MEANS[contrast], np.float32)


def render(anat: Anatomy, probs: np.ndarray, texture: np.ndarray, contrast: str,
           components: list[Component] | None = None) -> np.ndarray:
    """Image of ``contrast`` on the anatomy grid (float32)."""
    components = components or []
    if contrast == "DWI_b1000":
        b0 = render(anat, probs, texture, "DWI_b0", components)
        adc = render(anat, probs, texture, "ADC", components)
        return (b0 * np.exp(-1.0 * adc)).astype(np.float32)
    means = _tissue_means(anat, contrast)
    img: np.ndarray = np.tensordot(means, probs, axes=1).astype(np.float32)
    for c in components:
        if contrast in c.values:
            img = (1 - c.fraction) * img + c.fraction * np.float32(c.values[contrast])
    g = TEXTURE_GAIN.get(contrast, 0.5)
    if g:
        img *= np.power(texture, np.float32(g))
    return img.astype(np.float32)
