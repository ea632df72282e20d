"""Stage cache: keyed by input content, parameters and code; atomic outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.cache import StageStore, path_digest, stable_manifest

CALLS: list[str] = []


def double(inputs: dict[str, Path], out: Path, factor: int = 2) -> dict[str, int]:
    CALLS.append(str(inputs["x"]))
    value = int(inputs["x"].read_text()) * factor
    (out / "y.txt").write_text(str(value))
    return {"value": value}


def failing(inputs: dict[str, Path], out: Path) -> None:
    (out / "half.txt").write_text("partial")
    raise RuntimeError("worker died")


@pytest.fixture()
def store(tmp_path: Path) -> StageStore:
    return StageStore(tmp_path / "work")


def test_runs_once_then_hits(tmp_path, store):
    x = tmp_path / "x.txt"
    x.write_text("21")
    CALLS.clear()
    a = store.run("double", double, {"x": x})
    b = store.run("double", double, {"x": x})
    assert a.computed and not b.computed
    assert a.path == b.path and len(CALLS) == 1
    assert (a.path / "y.txt").read_text() == "42"
    m = a.manifest
    assert m["summary"] == {"value": 42}
    assert m["inputs"]["x"]["sha256"] == path_digest(x)
    assert {"numpy", "SimpleITK", "mri-safety"} <= set(m["packages"])
    assert m["outputs"] == ["y.txt"]


def test_key_is_content_not_path(tmp_path, store):
    x1, x2 = tmp_path / "a.txt", tmp_path / "b.txt"
    x1.write_text("5")
    x2.write_text("5")
    assert store.run("double", double, {"x": x1}).computed
    assert not store.run("double", double, {"x": x2}).computed
    x2.write_text("6")
    assert store.run("double", double, {"x": x2}).computed


def test_parameter_change_reruns(tmp_path, store):
    x = tmp_path / "x.txt"
    x.write_text("3")
    r2 = store.run("double", double, {"x": x}, {"factor": 2})
    r3 = store.run("double", double, {"x": x}, {"factor": 3})
    assert r2.digest != r3.digest and r3.computed
    assert (r3.path / "y.txt").read_text() == "9"


def test_failure_leaves_nothing_trusted(tmp_path, store):
    x = tmp_path / "x.txt"
    x.write_text("1")
    with pytest.raises(RuntimeError):
        store.run("bad", failing, {"x": x})
    assert not list((store.root / "bad").iterdir())


def test_killed_worker_leaves_only_tmp(tmp_path):
    """SIGKILL a process mid-stage: the final folder never appears, the next
    run recomputes and the leftover temporary folder is cleaned."""
    root = tmp_path / "work"
    x = tmp_path / "x.txt"
    x.write_text("7")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from pipelines.cache import StageStore
        def slow(inputs, out):
            (out / "y.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        StageStore({str(root)!r}).run("slow", slow, {{"x": Path({str(x)!r})}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    stage_dir = root / "slow"
    leftovers = [p.name for p in stage_dir.iterdir()]
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers)
    store = StageStore(root)
    assert store.clean_partial() == 1
    assert not any(stage_dir.iterdir())


def test_stable_manifest_drops_time_and_host(tmp_path):
    x = tmp_path / "x.txt"
    x.write_text("4")
    a = StageStore(tmp_path / "w1").run("double", double, {"x": x}).manifest
    b = StageStore(tmp_path / "w2").run("double", double, {"x": x}).manifest
    assert stable_manifest(a) == stable_manifest(b)
    assert json.dumps(stable_manifest(a))
    assert os.path.isabs(a["inputs"]["x"]["path"])


def test_edited_library_dependency_reruns(tmp_path, store, monkeypatch):
    """A library module listed in ``code_deps`` is part of the code version:
    editing it re-runs the stage (in a new process: a running one keeps the
    key of the code it loaded); an unrelated module's edit does not."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "dep_mod.py").write_text("FACTOR = 2\n")
    (lib / "other_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(lib))
    x = tmp_path / "x.txt"
    x.write_text("4")
    a = store.run("double", double, {"x": x}, code_deps=("dep_mod",))
    (lib / "other_mod.py").write_text("X = 2\n")
    b = store.run("double", double, {"x": x}, code_deps=("dep_mod",))
    (lib / "dep_mod.py").write_text("FACTOR = 3\n")
    # this process still runs the code it imported: same key until a new process
    same = store.run("double", double, {"x": x}, code_deps=("dep_mod",))
    assert not same.computed and same.digest == a.digest
    from pipelines import cache

    cache._source_digest.cache_clear()  # what a fresh worker process sees
    c = store.run("double", double, {"x": x}, code_deps=("dep_mod",))
    assert a.computed and not b.computed and c.computed
    assert a.digest == b.digest != c.digest
    assert a.manifest["code_version"] != c.manifest["code_version"]


def test_upgraded_numerical_package_reruns_the_stage(tmp_path: Path, monkeypatch) -> None:
    """The code version includes the versions of the packages that compute the
    numbers (SimpleITK, ANTs, numpy, ...): after an upgrade a stage re-runs
    instead of reusing outputs made by the old version."""
    from pipelines import cache

    store = StageStore(tmp_path / "work")
    x = tmp_path / "x.txt"
    x.write_text("4")
    a = store.run("double", double, {"x": x})
    same = store.run("double", double, {"x": x})
    real = cache._version
    monkeypatch.setattr(cache, "_version",
                        lambda n: "99.0" if n == "SimpleITK" else real(n))
    cache._result_versions.cache_clear()  # what a fresh worker after the upgrade sees
    try:
        b = store.run("double", double, {"x": x})
    finally:
        monkeypatch.undo()
        cache._result_versions.cache_clear()
    assert a.computed and not same.computed and b.computed and b.digest != a.digest
    assert b.manifest["outputs"] == a.manifest["outputs"]
