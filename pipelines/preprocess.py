"""Per-series preprocessing stages of the trial graph: ``n4`` and ``masks``.

A visit's series is the follow-up of its comparison with baseline, the
follow-up of its comparison with the previous visit and the baseline of the
next visit's comparison, so its bias correction and (as a baseline) its brain
masks are cached once per series here instead of being recomputed by every
register stage that uses it (before: 6 N4 fits and 3 template mask fits per
series of a 3-visit patient; now 3 and 2).

* ``n4`` (:func:`n4_stage`): ``n4.nii.gz``, the image N4 bias-corrected
  (:func:`mri_safety.preprocess.bias.n4_correct`, float32, same grid).
* ``masks`` (:func:`masks_stage`), for series that are the baseline of a
  comparison: ``brain_mask.nii.gz`` and ``icv_mask.nii.gz`` (uint8, the
  image's grid) and ``masks.json`` (which method made them), from
  :func:`mri_safety.change.masks.brain_mask` of the ``n4`` output.

Read back with :func:`load_n4` and :func:`load_masks`, which take the
geometry from the raw image (a NIfTI round trip may perturb direction cosines
in the last digits), so the register stage sees exactly the images that
``mri-safety compare`` computes in memory (tests/test_pipeline_pooled.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

if TYPE_CHECKING:
    from mri_safety.change.masks import MaskSet

from mri_safety.threads import itk_threads as _itk
from pipelines.cache import StageResult, StageStore

#: library code of each stage (part of its cache key)
N4_DEPS = ("mri_safety.preprocess.bias", "mri_safety.preprocess.grid", "mri_safety.change.compare")
MASKS_DEPS = ("mri_safety.change.masks", "mri_safety.distance", "mri_safety.change.region",
              "mri_safety.preprocess", "mri_safety.register", "mri_safety.change.compare")


def _raw(path: Path) -> sitk.Image:
    from mri_safety.change.compare import _load

    return _load(path)


def n4_stage(inputs: dict[str, Path], out: Path, itk_threads: int = 1) -> dict[str, Any]:
    """Bias-correct ``inputs["image"]`` -> ``out/n4.nii.gz`` (float32, same grid)."""
    from mri_safety.preprocess.bias import n4_correct

    with _itk(itk_threads):
        corrected, _ = n4_correct(_raw(inputs["image"]))
    sitk.WriteImage(corrected, str(out / "n4.nii.gz"), useCompression=True)
    return {"size": list(corrected.GetSize())}


def load_n4(n4_dir: Path, raw: sitk.Image) -> sitk.Image:
    """The ``n4`` stage output in ``n4_dir`` with the geometry of ``raw``."""
    img = sitk.ReadImage(str(n4_dir / "n4.nii.gz"), sitk.sitkFloat32)
    img.CopyInformation(raw)
    return img


def masks_stage(inputs: dict[str, Path], out: Path, n4: Path, itk_threads: int = 1
                ) -> dict[str, Any]:
    """Brain and intracranial masks of ``inputs["image"]`` from its ``n4`` stage
    folder ``n4`` -> ``brain_mask.nii.gz``, ``icv_mask.nii.gz``, ``masks.json``."""
    from mri_safety.change.masks import brain_mask, img_like

    raw = _raw(inputs["image"])
    with _itk(itk_threads):
        ms = brain_mask(load_n4(n4, raw))
    for name, m in (("brain_mask", ms.brain), ("icv_mask", ms.icv)):
        sitk.WriteImage(img_like(m.astype("uint8"), raw), str(out / f"{name}.nii.gz"),
                        useCompression=True)
    # full precision (JSON floats round-trip exactly): the pipeline's candidates must
    # equal those of ``mri-safety compare``, which keeps the matrix in memory
    to_mni = None if ms.subject_to_mni is None else ms.subject_to_mni.tolist()
    doc = {"mask_method": ms.method, "brain_voxels": int(ms.brain.sum()),
           "icv_voxels": int(ms.icv.sum()), "subject_to_mni_ras": to_mni}
    (out / "masks.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def load_masks(masks_dir: Path, raw: sitk.Image) -> MaskSet:
    """The :class:`~mri_safety.change.masks.MaskSet` written by :func:`masks_stage`;
    masks ``[i, j, k]`` on the grid of ``raw``."""
    from mri_safety.change.masks import MaskSet, arr

    def mask(name: str) -> NDArray[np.bool_]:
        img = sitk.ReadImage(str(masks_dir / f"{name}.nii.gz"), sitk.sitkUInt8)
        img.CopyInformation(raw)
        return arr(img) > 0

    doc = json.loads((masks_dir / "masks.json").read_text())
    to_mni = doc.get("subject_to_mni_ras")
    return MaskSet(mask("brain_mask"), mask("icv_mask"), str(doc["mask_method"]),
                   None if to_mni is None else np.asarray(to_mni, np.float64))


def run_n4(root: str, image: Path, threads: int) -> StageResult:
    """The ``n4`` stage of one converted series (keyed by its content)."""
    return StageStore(root).run("n4", n4_stage, {"image": image}, {"itk_threads": threads},
                                code_deps=N4_DEPS)


def run_masks(root: str, n4: StageResult, image: Path, threads: int) -> StageResult:
    """The ``masks`` stage of one series, from its ``n4`` stage result."""
    return StageStore(root).run("masks", masks_stage, {"image": image},
                                {"itk_threads": threads}, extra_key={"n4": n4.digest},
                                context={"n4": n4.path}, code_deps=MASKS_DEPS)
