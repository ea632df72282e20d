"""Across-visit plots (matplotlib, Agg backend, PNG): QC metrics per series type
and brain / ventricle volume and cord CSA, against days from dosing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: QC metrics plotted: (key, title)
QC_PLOT_METRICS: tuple[tuple[str, str], ...] = (
    ("snr_local", "SNR (local), higher better"), ("cnr", "CNR, higher better"),
    ("cjv", "CJV, lower better"), ("efc", "EFC, lower better"),
)
#: volume quantities plotted: (key, title)
VOLUME_QUANTITIES: tuple[tuple[str, str], ...] = (
    ("brain_volume", "brain volume (mL)"), ("ventricle_volume", "ventricle volume (mL)"),
    ("cord_csa_c2c3", "cord CSA at C2-C3 (mm$^2$)"),
)


def _finish(fig: Any, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # fixed margins for the 1 x N panel rows: tight_layout measured every tick label and
    # made each figure cost 0.59 s instead of 0.38 s (two per visit report)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.17, top=0.9, wspace=0.3)
    fig.savefig(out_png, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return out_png


def plot_qc_trend(points: Sequence[Mapping[str, Any]], out_png: Path,
                  current_days: float | None = None) -> Path:
    """QC metrics across visits, one line per series type.

    ``points``: ``{"series": label, "days": days from dosing, "visit": name,
    "metrics": {metric: value or None}}``. The visit at ``current_days`` is
    marked with a vertical line. Writes and returns ``out_png``.
    """
    fig, axes = plt.subplots(1, len(QC_PLOT_METRICS), figsize=(3.2 * len(QC_PLOT_METRICS), 2.8))
    by_series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for p in points:
        by_series[str(p["series"])].append(p)
    for ax, (key, title) in zip(axes, QC_PLOT_METRICS, strict=True):
        for label, pts in sorted(by_series.items()):
            xy = sorted((float(p["days"]), float(p["metrics"][key])) for p in pts
                        if p.get("days") is not None and p["metrics"].get(key) is not None)
            if xy:
                ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", label=label, ms=4)
        if current_days is not None:
            ax.axvline(current_days, color="0.5", ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("days from dosing", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=7, loc="best")
    return _finish(fig, out_png)


def plot_volumes(points: Sequence[Mapping[str, Any]], out_png: Path,
                 current_days: float | None = None, min_span: float = 0.05) -> Path:
    """Brain and ventricle volume (points in mm^3, plotted in mL) and cord CSA
    at C2-C3 (mm^2) across visits.

    ``points``: ``{"quantity": key of VOLUME_QUANTITIES, "days": ..., "value": ...,
    "series": label}``; missing values are skipped (the panel says so when empty).
    The y axis spans at least +-``min_span`` (fraction) of the values' midpoint.
    """
    fig, axes = plt.subplots(1, len(VOLUME_QUANTITIES),
                             figsize=(3.4 * len(VOLUME_QUANTITIES), 2.8))
    for ax, (key, title) in zip(axes, VOLUME_QUANTITIES, strict=True):
        scale = 1e-3 if key.endswith("volume") else 1.0
        by_series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for p in points:
            if p.get("quantity") == key and p.get("value") is not None \
                    and p.get("days") is not None:
                by_series[str(p.get("series", ""))].append(
                    (float(p["days"]), float(p["value"]) * scale))
        values = []
        for label, xy in sorted(by_series.items()):
            xy.sort()
            ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", ms=4, label=label)
            values += [b for _, b in xy]
        if values:
            # at least +-min_span around the mean, so that measurement noise
            # (< 1 %) does not look like a trend
            mid = 0.5 * (max(values) + min(values))
            half = max(0.5 * (max(values) - min(values)) * 1.15, abs(mid) * min_span)
            ax.set_ylim(mid - half, mid + half)
        if not by_series:
            ax.text(0.5, 0.5, "no measurement", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        if current_days is not None:
            ax.axvline(current_days, color="0.5", ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("days from dosing", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    return _finish(fig, out_png)
