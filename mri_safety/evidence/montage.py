"""Evidence montage for one flagged candidate (PNG, matplotlib Agg).

Rows: reference (the baseline or the previous visit) | follow-up (in the
reference's space) | signed difference (or z map),
columns: axial | coronal | sagittal through the candidate centroid (world
RAS+ mm). Difference colour map ``RdBu_r``: increase warm (red), decrease cool
(blue), symmetric limits, colour bar. Every panel has orientation letters
(radiological convention, see :mod:`mri_safety.evidence.display`), a 10 mm
scale bar and a crosshair at the centroid; the title carries candidate id,
type, volume, location and score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from mri_safety.evidence.display import (  # noqa: E402
    CONVENTION,
    PLANES,
    Slice2D,
    slice_through,
    to_ras,
    window,
)

ROWS = ("baseline", "follow-up", "difference")


def _session(name: str) -> str:
    """``ses-<label>`` of a BIDS file name, else the name itself."""
    m = re.search(r"ses-[A-Za-z0-9]+", name)
    return m.group(0) if m else name


def comparison_labels(reference: str, followup: str) -> tuple[tuple[str, str, str], str]:
    """Row labels and difference label of a montage comparing the files
    ``followup`` with ``reference`` (BIDS names): a follow-up compared with the
    PREVIOUS visit must not be labelled "baseline".

    >>> comparison_labels("sub-01_ses-24h_FLAIR.nii.gz", "sub-01_ses-M2_FLAIR.nii.gz")
    (('reference ses-24h', 'follow-up ses-M2', 'z'), 'z (ses-M2 - ses-24h)')
    """
    r, f = _session(reference), _session(followup)
    return (f"reference {r}", f"follow-up {f}", "z"), f"z ({f} - {r})"


@dataclass(frozen=True)
class MontageCandidate:
    """What the montage title and crosshair need about a candidate.

    ``centroid_ras_mm``: world RAS+ mm; ``volume_mm3``: mm^3; ``score``: the
    detector's score (e.g. peak |z|)."""

    id: str
    type: str
    centroid_ras_mm: tuple[float, float, float]
    volume_mm3: float
    location: str = ""
    score: float = float("nan")


@dataclass
class Panel:
    """One drawn panel: row name, plane, the 2D display slice (array, marker
    position, pixel size, edge letters)."""

    row: str
    plane: str
    slice: Slice2D


@dataclass
class MontageResult:
    path: Path | None
    panels: list[Panel] = field(default_factory=list)
    convention: str = CONVENTION
    row_labels: tuple[str, ...] = ROWS

    def panel(self, row: str, plane: str) -> Panel:
        for p in self.panels:
            if p.row == row and p.plane == plane:
                return p
        raise KeyError(f"no panel {row}/{plane}")


def _decorate(ax: Axes, s: Slice2D, colour: str = "yellow") -> None:
    """Letters, 10 mm scale bar and crosshair on a panel drawn in mm units."""
    h_mm = s.data.shape[0] * s.pixel_mm[0]
    w_mm = s.data.shape[1] * s.pixel_mm[1]
    outline = [pe.withStroke(linewidth=2.0, foreground="black")]  # readable on any background
    kw: dict[str, Any] = {"color": "white", "fontsize": 9, "fontweight": "bold",
                          "transform": ax.transAxes, "path_effects": outline}
    ax.text(0.02, 0.5, s.letters["left"], ha="left", va="center", **kw)
    ax.text(0.98, 0.5, s.letters["right"], ha="right", va="center", **kw)
    ax.text(0.5, 0.98, s.letters["top"], ha="center", va="top", **kw)
    ax.text(0.5, 0.02, s.letters["bottom"], ha="center", va="bottom", **kw)
    # scale bar: 10 mm, bottom right
    x1 = w_mm - 0.05 * w_mm
    y = h_mm - 0.06 * h_mm
    ax.plot([x1 - 10.0, x1], [y, y], color="white", lw=2.5, solid_capstyle="butt",
            path_effects=[pe.withStroke(linewidth=4.0, foreground="black")])
    ax.text(x1 - 5.0, y - 0.02 * h_mm, "10 mm", color="white", fontsize=6, ha="center",
            va="bottom", path_effects=outline)
    # crosshair with a gap around the centroid so the finding stays visible
    yc = (s.marker_rc[0] + 0.5) * s.pixel_mm[0]
    xc = (s.marker_rc[1] + 0.5) * s.pixel_mm[1]
    gap = 4.0
    for xs, ys in (([0, xc - gap], [yc, yc]), ([xc + gap, w_mm], [yc, yc]),
                   ([xc, xc], [0, yc - gap]), ([xc, xc], [yc + gap, h_mm])):
        ax.plot(xs, ys, color=colour, lw=0.6, alpha=0.8)
    ax.set_xlim(0, w_mm)
    ax.set_ylim(h_mm, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _show(ax: Axes, s: Slice2D, **kw: object) -> object:
    h_mm = s.data.shape[0] * s.pixel_mm[0]
    w_mm = s.data.shape[1] * s.pixel_mm[1]
    return ax.imshow(s.data, extent=(0, w_mm, h_mm, 0), origin="upper",
                     interpolation="nearest", **kw)  # type: ignore[arg-type]


def render_montage(
    baseline: nib.spatialimages.SpatialImage,
    followup: nib.spatialimages.SpatialImage,
    difference: nib.spatialimages.SpatialImage,
    candidate: MontageCandidate,
    out_png: Path | str | None = None,
    *,
    fov_mm: float | None = 100.0,
    diff_limit: float | None = None,
    diff_label: str = "follow-up - baseline",
    row_labels: tuple[str, str, str] = ROWS,
    dpi: int = 110,
) -> MontageResult:
    """Draw the 3 x 3 evidence montage of one candidate.

    ``baseline``, ``followup`` (already in baseline space) and ``difference``
    (signed difference or z map) must share one voxel grid (affine voxel ->
    world RAS+ mm). ``fov_mm``: crop each panel to this square around the
    centroid (``None`` = whole slice). ``diff_limit``: colour limit +-L
    (default: 99.5th percentile of |difference| over non-zero voxels).
    ``row_labels``: the three row titles (see :func:`comparison_labels`).
    Writes ``out_png`` when given and returns the display slices and letters
    of every panel.
    """
    if len(row_labels) != 3:
        raise ValueError(f"candidate {candidate.id}: row_labels needs 3 labels, got "
                         f"{len(row_labels)}")
    shapes = {tuple(im.shape[:3]) for im in (baseline, followup, difference)}
    if len(shapes) != 1 or not (np.allclose(baseline.affine, followup.affine, atol=1e-3)
                                and np.allclose(baseline.affine, difference.affine, atol=1e-3)):
        raise ValueError(f"candidate {candidate.id}: baseline, follow-up and difference must share "
                         f"one grid (shapes {sorted(shapes)})")
    vols = [to_ras(baseline), to_ras(followup), to_ras(difference)]
    aff = vols[0].affine
    arrays: list[NDArray[np.float32]] = [np.asarray(v.dataobj, dtype=np.float32) for v in vols]
    if diff_limit is None:
        ad = np.abs(arrays[2])
        nz = ad[ad > 0]
        diff_limit = float(np.percentile(nz, 99.5)) if nz.size else 1.0
    lim = max(float(diff_limit), 1e-6)
    wins = [window(arrays[0]), window(arrays[1])]

    fig, axes = plt.subplots(3, 3, figsize=(9.0, 9.6), facecolor="black")
    result = MontageResult(Path(out_png) if out_png is not None else None,
                           row_labels=tuple(row_labels))
    diff_im = None
    for r, (row, arr) in enumerate(zip(ROWS, arrays, strict=True)):
        for c, plane in enumerate(PLANES):
            s = slice_through(arr, aff, candidate.centroid_ras_mm, plane, fov_mm)
            ax = axes[r, c]
            ax.set_facecolor("black")
            if r < 2:
                _show(ax, s, cmap="gray", vmin=wins[r][0], vmax=wins[r][1])
            else:
                diff_im = _show(ax, s, cmap="RdBu_r", vmin=-lim, vmax=lim)
            _decorate(ax, s, "yellow" if r < 2 else "black")
            if r == 0:
                ax.set_title(plane, color="white", fontsize=10)
            if c == 0:
                ax.set_ylabel(row_labels[r], color="white", fontsize=10)
            result.panels.append(Panel(row, plane, s))
    if diff_im is not None:
        cb = fig.colorbar(diff_im, ax=list(axes[2, :]), fraction=0.025, pad=0.01)  # type: ignore[arg-type]
        cb.set_label(f"{diff_label} (red = increase, blue = decrease)", color="white", fontsize=8)
        cb.ax.tick_params(colors="white", labelsize=7)
    x, y, z = candidate.centroid_ras_mm
    fig.suptitle(
        f"{candidate.id} | {candidate.type} | {candidate.volume_mm3:.0f} mm\u00b3 | "
        f"{candidate.location or 'location n/a'} | score {candidate.score:.2f}\n"
        f"centroid RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm",
        color="white", fontsize=11)
    fig.text(0.5, 0.005, f"R on left ({CONVENTION}); scale bar 10 mm", color="white",
             fontsize=8, ha="center", va="bottom")
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=dpi, facecolor="black")
    plt.close(fig)
    return result
