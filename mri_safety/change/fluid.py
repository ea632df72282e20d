"""What a T2w increase in a FLUID space is: CSF, not a new lesion.

Free fluid (CSF in the sulci, cisterns and ventricles) is the brightest thing on
a T2-weighted or proton-density image and dark on FLAIR, whose inversion pulse
nulls it. Its T2w signal between two visits varies with CSF flow (pulsation in
the cisterns and the fourth ventricle) and with the partial volume of thick
slices at other slice positions, so a T2w comparison finds increases there
that FLAIR does not show as lesions. A new lesion (oedema, demyelination,
infarct, tumour) is bright on FLAIR as well as on T2w.

Measured on the real longitudinal-ms visits through the pipeline (2026-12-06,
docs/detection.md, method step 7, "T2w increases in fluid"): the T2w
comparison, pooled with FLAIR, flagged 9 candidates per visit, of which 5 and 4
lay on no expert lesion and away from every FLAIR candidate; looked at, each
was CSF (sulci, cisterns, the fourth ventricle, a frontal horn, the
interhemispheric fissure), dark on FLAIR at both visits.

:func:`fluid_at_both_visits` tells such a candidate: its mean normalised FLAIR
(tissue median = 1) is below ``1 / hyper_ratio`` (darker than normal tissue by
the lesion-likeness ratio, the mirror of the lesion-like rule) at baseline AND
at follow-up. A space that was tissue at baseline and is fluid at follow-up (a
new cyst, tissue lost to enlarged ventricles) is not covered: it is a change,
and stays a candidate. Extra-axial collections keep their own rule in
:mod:`mri_safety.change.compare` (they are findings, and CSF-like on FLAIR
only when they are pure CSF).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: contrasts on which free fluid is bright (FLAIR nulls it): their increases are
#: checked against a FLAIR pair of the same visits when there is one
FLUID_BRIGHT = frozenset({"t2w", "pd"})


def fluid_at_both_visits(flair_base: NDArray[np.floating], flair_fu: NDArray[np.floating],
                         defined: NDArray[np.bool_], voxels: NDArray[np.integer],
                         hyper_ratio: float) -> tuple[float, float] | None:
    """Whether a candidate lies in a space that is fluid at both visits.

    ``flair_base`` / ``flair_fu``: the FLAIR baseline and follow-up of the same
    visits, each normalised (its tissue median = 1), on the candidate's grid;
    ``defined``: where that FLAIR pair covers the grid; ``voxels``: flat indices of
    the candidate. Returns ``(baseline mean, follow-up mean)`` over the part of
    the candidate FLAIR covers, when that is at least half of it (a cistern at the
    edge of the FLAIR's search region is still judged) and both are below
    ``1 / hyper_ratio``; else None.

    >>> b = np.array([0.3, 0.4, 1.0]); f = np.array([0.5, 0.6, 1.3])
    >>> ok = np.ones(3, bool)
    >>> fluid_at_both_visits(b, f, ok, np.array([0, 1]), 1.2)
    (0.35, 0.55)
    >>> fluid_at_both_visits(b, f, ok, np.array([1, 2]), 1.2) is None  # tissue turned bright
    True
    >>> fluid_at_both_visits(b, f, np.array([True, False, False]), np.array([0, 1]), 1.2)
    (0.3, 0.5)
    """
    covered = voxels[np.asarray(defined).ravel()[voxels]]
    if voxels.size == 0 or 2 * covered.size < voxels.size:
        return None
    mb = float(np.asarray(flair_base).ravel()[covered].mean())
    mf = float(np.asarray(flair_fu).ravel()[covered].mean())
    level = 1.0 / hyper_ratio
    return (round(mb, 3), round(mf, 3)) if mb < level and mf < level else None
