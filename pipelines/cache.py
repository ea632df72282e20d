"""Content-addressed stage outputs: resume, caching and provenance.

Every stage run is keyed by a digest of

* the **content** of its input files (SHA-256 of the bytes, not paths or
  modification times, so a copied tree or a resumed run on another host
  hits the same cache),
* its **parameters** (JSON-canonicalised; thread counts are parameters),
* its **code version**: the package version plus a hash of the source file of
  the stage function's module and of the library modules it declares it calls
  (``code_deps``), so an edited stage or library function re-runs even without
  a version bump, and the versions of the third-party packages that compute
  results (:data:`RESULT_PACKAGES`: an upgraded SimpleITK or ANTs re-runs).

Outputs land in ``<root>/<stage>/<digest>/``. A stage writes into a private
temporary folder beside it and the folder is renamed into place only after
the manifest is written, so a killed worker leaves at most a ``.tmp-*`` folder
that is never trusted (and is removed by :meth:`StageStore.clean_partial`).

``manifest.json`` records the inputs with their hashes, the stage, the
parameters, the package versions, host, start and end times and duration.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri_safety import __version__

#: Packages whose versions go into every manifest.
TRACKED_PACKAGES = (
    "mri-safety", "numpy", "scipy", "nibabel", "pydicom", "SimpleITK", "antspyx",
    "nilearn", "dask", "distributed", "highdicom",
)

#: Packages whose version can change a stage's numbers; part of every code
#: version (the scheduling packages dask/distributed are recorded, not keyed).
RESULT_PACKAGES = ("numpy", "scipy", "nibabel", "pydicom", "SimpleITK", "antspyx",
                   "nilearn", "highdicom")

#: Manifest fields that legitimately differ between two runs of the same work.
VOLATILE_FIELDS = ("host", "started", "finished", "duration_s", "cpu_s", "python")

_CHUNK = 1 << 20


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (replacing it), or copy where links are impossible
    (another file system): published trees share bytes with the stage outputs."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def path_digest(path: Path) -> str:
    """Digest of a file, or of a folder's relative file names and contents."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@functools.cache
def _source_digest(path: Path) -> str:
    """Digest of a source file, read once per process: a long-lived worker
    runs the code it imported, so its keys must not follow later edits of the
    files on disk (a new worker or run picks them up)."""
    return file_digest(path)


def _module_files(name: str) -> list[Path]:
    """Source files of module ``name`` (every ``.py`` below it for a package)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: all of its source files
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def _result_versions() -> str:
    """Versions of :data:`RESULT_PACKAGES` in this process (read once: a worker
    runs the packages it imported)."""
    return canonical_json({n: _version(n) for n in RESULT_PACKAGES})


def code_version(fn: Callable[..., Any], deps: tuple[str, ...] = ()) -> str:
    """Package version + hash of the source file defining ``fn``, of the
    library modules/packages ``deps`` (dotted names) the stage calls and of the
    versions of :data:`RESULT_PACKAGES`, so an edited stage or library function
    or an upgraded numerical package re-runs even without a version bump."""
    try:
        src = inspect.getsourcefile(fn)
    except TypeError:
        src = None
    files = [Path(src)] if src and os.path.exists(src) else []
    for name in deps:
        importlib.import_module(name)  # loaded now, hashed now (see _source_digest)
        files.extend(_module_files(name))
    if not files:
        return f"{__version__}+nosource"
    h = hashlib.sha256()
    # a stage without library deps: its module read from disk each time; with
    # deps: every file read once per process (see _source_digest)
    digest = _source_digest if deps else file_digest
    for f in files:
        h.update(digest(f).encode())
    h.update(_result_versions().encode())
    return f"{__version__}+{h.hexdigest()[:16]}"


def package_versions() -> dict[str, str]:
    return {name: _version(name) for name in TRACKED_PACKAGES}


def stage_digest(
    stage: str, input_digests: Mapping[str, str], params: Mapping[str, Any], code: str
) -> str:
    """The cache key of one stage run (24 hex digits)."""
    blob = canonical_json(
        {"stage": stage, "inputs": dict(input_digests), "params": dict(params), "code": code}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class StageResult:
    """Where a stage's outputs are, and whether this call computed them."""

    stage: str
    digest: str
    path: Path
    computed: bool

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / "manifest.json").read_text())


class StageStore:
    """A folder of content-addressed stage outputs (see module docstring)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def _display(self, path: Path) -> str:
        """Input path relative to the store when inside it (so two stores of
        the same work have equal manifests), else absolute."""
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path.resolve())

    def location(self, stage: str, digest: str) -> Path:
        return self.root / stage / digest

    def is_done(self, stage: str, digest: str) -> bool:
        return (self.location(stage, digest) / "manifest.json").is_file()

    def clean_partial(self) -> int:
        """Remove folders left by killed runs; returns how many."""
        n = 0
        for tmp in self.root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        return n

    def run(
        self,
        stage: str,
        fn: Callable[..., Any],
        inputs: Mapping[str, Path],
        params: Mapping[str, Any] | None = None,
        extra_key: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
        code_deps: tuple[str, ...] = (),
    ) -> StageResult:
        """Run ``fn(inputs, out_dir, **params, **context)`` unless an identical
        run exists.

        ``fn`` writes its outputs into ``out_dir`` (a private temporary folder)
        and may return a JSON-serialisable summary stored in the manifest.
        ``extra_key`` adds already-computed digests (e.g. an upstream stage's
        digest, or the digest of a whole DICOM series) to the key without
        re-hashing files. ``context`` passes Python objects that are *not*
        hashed (e.g. a conversion plan): the caller must put a digest of
        whatever in them can change the output into ``extra_key``.
        ``code_deps``: dotted names of the library modules or packages ``fn``
        calls; their source is part of the code version (see :func:`code_version`).
        """
        params = dict(params or {})
        in_digests = {k: path_digest(Path(v)) for k, v in inputs.items()}
        in_digests.update(extra_key or {})
        code = code_version(fn, tuple(code_deps))
        digest = stage_digest(stage, in_digests, params, code)
        final = self.location(stage, digest)
        if self.is_done(stage, digest):
            return StageResult(stage, digest, final, computed=False)

        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.time()
        cpu0 = time.process_time()  # CPU of the whole worker process (all its threads)
        try:
            summary = fn({k: Path(v) for k, v in inputs.items()}, tmp, **params,
                         **dict(context or {}))
            finished = time.time()
            cpu_s = time.process_time() - cpu0
            manifest = {
                "stage": stage,
                "digest": digest,
                "code_version": code,
                "inputs": {k: {"path": self._display(Path(v)), "sha256": in_digests[k]}
                           for k, v in inputs.items()},
                "upstream": dict(extra_key or {}),
                "parameters": params,
                "outputs": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                                  if p.is_file()),
                "summary": summary,
                "packages": package_versions(),
                "host": socket.gethostname(),
                "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(finished)),
                "duration_s": round(finished - started, 3),
                "cpu_s": round(cpu_s, 3),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                # another worker finished the same work first: theirs is as good
                if not self.is_done(stage, digest):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return StageResult(stage, digest, final, computed=False)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StageResult(stage, digest, final, computed=True)


def stable_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest without the fields that differ between identical runs
    (time and host), for comparing a resumed run with an uninterrupted one."""
    return {k: v for k, v in manifest.items() if k not in VOLATILE_FIELDS}
