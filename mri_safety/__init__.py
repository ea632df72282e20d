"""mri-safety: a neuroimaging safety review pipeline for cell-therapy trials.

Stages are subpackages, each a set of pure functions (arrays/images in,
arrays/images out); :mod:`pipelines` composes them with Dask and does all I/O.
Data flows one way: a stage never imports a later one::

    dicom -> synth -> qc -> preprocess -> register -> change -> evidence

Coordinate conventions used throughout:

* NIfTI affines map voxel indices (i, j, k) to world **RAS+ millimetres**:
  +x towards the patient's Right, +y Anterior, +z Superior (nibabel's
  convention).
* DICOM headers are **LPS+** (+x patient Left, +y Posterior, +z Superior);
  conversion negates the first two world axes.
* "voxel" always means a 0-based index into the array as stored.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mri-safety")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
