"""What counts as a new T1-DARK focus on a T1-weighted image.

A new T1-dark focus (infarct, demyelinating lesion, mass, oedema, a collection)
replaces tissue by something darker than that tissue. A rescan of thick
slices at other slice positions, or a residual misregistration, also lowers
T1w signal, at every grey/white interface: a follow-up voxel then samples a
mixture of the tissues the baseline shows within one voxel of it, so its
value stays within the range of those baseline values (measured on the real
4.8 mm patient-positions pairs, docs/detection.md: once white matter is no
longer left out of the T1w search, such decreases of 20-330 mm3 at grey/white
interfaces flagged 3-5 candidates per no-change pair).

:func:`below_envelope` keeps a decrease only where the follow-up is darker than
every baseline voxel of its 3 x 3 x 3 neighbourhood: the morphological
envelope used against misregistration in change detection (the erosion of the
reference before differencing; e.g. Bruzzone & Prieto 2000, and the
"min-max" difference of image differencing in astronomy). One voxel covers a
shift of a whole slice of a 2D series and the residual misregistration of a
1 mm 3D one. A new focus in white matter is darker than all the white matter
around it; a focus at the grey/white border must be darker than the grey
matter there to count, the price of the rule.

Arrays are numpy ``[i, j, k]`` on one grid, intensities normalised (tissue
median = 1), both visits at the same resolution (profile-matched, smoothed).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi


def below_envelope(base: NDArray[np.floating], fu: NDArray[np.floating]) -> NDArray[np.bool_]:
    """Voxels where ``fu`` is below the minimum of ``base`` over the voxel's
    3 x 3 x 3 neighbourhood (edges: nearest value).

    >>> b = np.ones((9, 9, 9), np.float32); b[:, :, :4] = 0.7   # grey | white matter
    >>> f = b.copy(); f[:, :, 4] = 0.7                          # the border moved a voxel
    >>> f[4, 4, 6] = 0.6                                        # a dark focus in white matter
    >>> m = below_envelope(b, f)
    >>> bool(m[4, 4, 6]), bool(m[2, 2, 4]), int(m.sum())
    (True, False, 1)
    """
    if base.shape != fu.shape:
        raise ValueError(f"below_envelope: shapes differ {base.shape} vs {fu.shape}")
    low = ndi.minimum_filter(np.asarray(base, np.float32), size=3, mode="nearest")
    return np.asarray(fu < low, bool)
