"""PNG panels: baseline vs follow-up slices through each generated abnormality."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

#: Contrast that shows each abnormality best.
BEST: dict[str, str] = {"lesion": "FLAIR", "enlarging": "FLAIR", "mass": "T2w",
                        "enhancing": "T1w_post", "infarct": "DWI_b1000", "haemorrhage": "T2starw",
                        "subdural": "FLAIR", "ventricles": "T2w"}


def _slice_at(img: nib.Nifti1Image, ras: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    data = np.asarray(img.dataobj, dtype=np.float32)
    v = np.linalg.inv(img.affine) @ np.append(ras, 1)
    k = int(np.clip(round(v[2]), 0, data.shape[2] - 1))
    return data[:, :, k], (float(v[0]), float(v[1]))


def write_pictures(study_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per abnormality (baseline | follow-up, 2 contrasts) for every patient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for tj in sorted((study_dir / "ground_truth").glob("*/truth.json")):
        t = json.loads(tj.read_text())
        gt = tj.parent
        for a in t["abnormalities"]:
            vname = a["visit_of_appearance"]
            centre = {vn: np.asarray(c) for vn, c in a["centre_ras_by_visit"].items()}
            for vn, fname in ((vname, "labels_native"), ("baseline", "labels_baseline")):
                lab = nib.load(str(gt / vname / f"{fname}.nii.gz"))
                idx = np.argwhere(np.asarray(lab.dataobj) == a["id"])  # type: ignore[attr-defined]
                if len(idx):  # centroid of the label's most populated slice (world RAS mm)
                    kk = np.bincount(idx[:, 2]).argmax()
                    idx = idx[idx[:, 2] == kk]
                    aff = lab.affine  # type: ignore[attr-defined]
                    centre[vn] = aff[:3, :3] @ idx.mean(0) + aff[:3, 3]
            contrasts = [BEST[a["kind"]], "T1w"]
            fig, axes = plt.subplots(2, 2, figsize=(8, 8))
            for r, c in enumerate(contrasts):
                for col, vn in enumerate(("baseline", vname)):
                    img = nib.load(str(gt / vn / "volumes" / f"{c}.nii.gz"))
                    sl, (x, y) = _slice_at(img, centre[vn])  # type: ignore[arg-type]
                    ax = axes[r, col]
                    ax.imshow(sl.T, cmap="gray", origin="upper",
                              vmax=np.percentile(sl, 99.5))
                    vox = float(abs(img.affine[0, 0]) or 1)  # type: ignore[attr-defined]
                    ax.add_patch(plt.Circle((x, y), 12 / vox,
                                            fill=False, color="y", lw=0.8))
                    ax.set_title(f"{vn} {c}", fontsize=9)
                    ax.axis("off")
            fig.suptitle(f"{t['patient_id']} #{a['id']} {a['kind']} ({a['site']}), "
                         f"{a['diameter_mm']:.0f} mm, new at {vname}")
            p = out_dir / f"{t['patient_id']}_{a['id']:02d}_{a['kind']}.png"
            fig.tight_layout()
            fig.savefig(p, dpi=70)
            plt.close(fig)
            written.append(p)
        # spine
        fig, axes = plt.subplots(1, len(t["visits"]), figsize=(3 * len(t["visits"]), 3.5))
        for ax, v in zip(np.atleast_1d(axes), t["visits"], strict=True):
            img = nib.load(str(gt / v["name"] / "volumes" / "spine_T2w.nii.gz"))
            d = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]
            ax.imshow(d[:, :, d.shape[2] // 2].T, cmap="gray")
            ax.set_title(f"spine T2w {v['name']}", fontsize=9)
            ax.axis("off")
        p = out_dir / f"{t['patient_id']}_spine.png"
        fig.tight_layout()
        fig.savefig(p, dpi=70)
        plt.close(fig)
        written.append(p)
    return written
