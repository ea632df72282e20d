"""Registration check pictures for one baseline / follow-up pair.

PNG: the fixed (baseline) image in grey with the edges of the moving
(follow-up, already resampled into baseline space) overlaid in colour, in
three planes through a world point (default: the image centre). Edges are
SimpleITK Canny edges of each 2D display slice (smoothing variance 2 px^2;
hysteresis thresholds at the 80th / 95th percentile of the slice's gradient
magnitude inside the head). Optional animated GIF (Pillow): the two images
alternate ("flicker", as in fMRIPrep reports); misregistration shows as
motion. Display convention: :mod:`mri_safety.evidence.display`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from PIL import Image  # noqa: E402

from mri_safety.evidence.display import (  # noqa: E402
    CONVENTION,
    PLANES,
    Slice2D,
    slice_through,
    to_ras,
    window,
)


@dataclass
class RegCheckResult:
    png: Path | None
    gif: Path | None
    fixed: dict[str, Slice2D] = field(default_factory=dict)
    moving_edges: dict[str, NDArray[np.bool_]] = field(default_factory=dict)


def canny_edges(slice2d: NDArray[np.floating], lo: float, hi: float) -> NDArray[np.bool_]:
    """Canny edges (SimpleITK) of a 2D array scaled to the window [lo, hi]."""
    a = np.clip((np.asarray(slice2d, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    img = sitk.GetImageFromArray(a)
    grad = sitk.GetArrayFromImage(sitk.GradientMagnitudeRecursiveGaussian(img, 1.4))
    inside = grad[a > 0.05]
    if inside.size < 10:
        return np.zeros(a.shape, dtype=bool)
    t_lo, t_hi = (float(x) for x in np.percentile(inside, [80, 95]))
    e = sitk.CannyEdgeDetection(img, lowerThreshold=t_lo, upperThreshold=max(t_hi, t_lo),
                                variance=[2.0, 2.0])
    return np.asarray(sitk.GetArrayFromImage(e) > 0)


def _grey(s: Slice2D, win: tuple[float, float]) -> NDArray[np.uint8]:
    a = np.clip((s.data - win[0]) / max(win[1] - win[0], 1e-6), 0, 1)
    return np.asarray(np.round(a * 255), dtype=np.uint8)


def render_regcheck(
    fixed: nib.spatialimages.SpatialImage,
    moving: nib.spatialimages.SpatialImage,
    out_png: Path | str | None = None,
    *,
    centre_ras_mm: tuple[float, float, float] | None = None,
    out_gif: Path | str | None = None,
    title: str = "registration check",
    dpi: int = 100,
) -> RegCheckResult:
    """Fixed image with the moving image's edges, axial / coronal / sagittal.

    Both images must share one voxel grid (the moving one already resampled
    into fixed space; affine voxel -> world RAS+ mm). ``centre_ras_mm``: world
    point the planes pass through (default: centre of the grid).
    """
    if tuple(fixed.shape[:3]) != tuple(moving.shape[:3]) or not np.allclose(
            fixed.affine, moving.affine, atol=1e-3):
        raise ValueError(f"{title}: fixed and moving images must share one grid "
                         f"(shapes {fixed.shape[:3]} vs {moving.shape[:3]})")
    f, m = to_ras(fixed), to_ras(moving)
    fa = np.asarray(f.dataobj, dtype=np.float32)
    ma = np.asarray(m.dataobj, dtype=np.float32)
    aff = f.affine
    if centre_ras_mm is None:
        c = aff @ np.array([*(np.array(fa.shape) - 1) / 2.0, 1.0])
        centre_ras_mm = (float(c[0]), float(c[1]), float(c[2]))
    wf, wm = window(fa), window(ma)
    res = RegCheckResult(Path(out_png) if out_png else None, Path(out_gif) if out_gif else None)
    frames_f: list[NDArray[np.uint8]] = []
    frames_m: list[NDArray[np.uint8]] = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, plane in zip(axes, PLANES, strict=True):
        sf = slice_through(fa, aff, centre_ras_mm, plane)
        sm = slice_through(ma, aff, centre_ras_mm, plane)
        edges = canny_edges(sm.data, *wm)
        res.fixed[plane] = sf
        res.moving_edges[plane] = edges
        h_mm, w_mm = sf.data.shape[0] * sf.pixel_mm[0], sf.data.shape[1] * sf.pixel_mm[1]
        ext = (0.0, w_mm, h_mm, 0.0)
        ax.imshow(sf.data, cmap="gray", vmin=wf[0], vmax=wf[1], extent=ext,
                  interpolation="nearest")
        overlay = np.zeros((*edges.shape, 4), dtype=np.float32)
        overlay[edges] = (1.0, 0.2, 0.2, 1.0)
        ax.imshow(overlay, extent=ext, interpolation="nearest")
        kw: dict[str, Any] = {"color": "yellow", "fontsize": 10, "fontweight": "bold",
                              "transform": ax.transAxes}
        ax.text(0.02, 0.5, sf.letters["left"], ha="left", va="center", **kw)
        ax.text(0.98, 0.5, sf.letters["right"], ha="right", va="center", **kw)
        ax.text(0.5, 0.98, sf.letters["top"], ha="center", va="top", **kw)
        ax.text(0.5, 0.02, sf.letters["bottom"], ha="center", va="bottom", **kw)
        ax.set_title(plane, color="white")
        ax.set_xticks([])
        ax.set_yticks([])
        frames_f.append(_grey(sf, wf))
        frames_m.append(_grey(sm, wm))
    fig.suptitle(f"{title}: baseline (grey) with follow-up edges (red)", color="white")
    fig.text(0.5, 0.01, f"R on left ({CONVENTION})", color="white", fontsize=8, ha="center")
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=dpi, facecolor="black")
    plt.close(fig)
    if out_gif is not None:
        _write_gif(Path(out_gif), frames_f, frames_m, [res.fixed[p] for p in PLANES])
    return res


def _strip(frames: list[NDArray[np.uint8]], slices: list[Slice2D]) -> Image.Image:
    """Three panels side by side, each resized to square-ish mm aspect, 256 px high."""
    tiles = []
    for a, s in zip(frames, slices, strict=True):
        h_mm, w_mm = a.shape[0] * s.pixel_mm[0], a.shape[1] * s.pixel_mm[1]
        w_px = max(1, int(round(256 * w_mm / h_mm)))
        tiles.append(Image.fromarray(a).resize((w_px, 256), Image.Resampling.BILINEAR))
    out = Image.new("L", (sum(t.width for t in tiles), 256))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width
    return out


def _write_gif(path: Path, ff: list[NDArray[np.uint8]], fm: list[NDArray[np.uint8]],
               slices: list[Slice2D]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = _strip(ff, slices), _strip(fm, slices)
    a.save(path, save_all=True, append_images=[b], duration=600, loop=0)
