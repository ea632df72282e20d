"""The trial pipeline on a small synthetic trial: visit summaries, resume
without recomputation, a killed run resumed to byte-identical outputs, and a
broken series that does not stop its visit."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SECRET = b"pipeline-test-secret-0123456789"
KEEP = ("02_FLAIR", "09_spine_T2w")


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """One synthetic patient (baseline, 24h, M2), FLAIR + spine T2w only."""
    from mri_safety.synth import synth_main

    full = tmp_path_factory.mktemp("synth")
    synth_main(full, 1, 0, "small")
    small = tmp_path_factory.mktemp("trial")
    for series in (full / "dicom").glob("*/*/*"):
        if series.name in KEEP:
            shutil.copytree(series, small / "dicom" / series.relative_to(full / "dicom"))
    shutil.copy(full / "enrolment.csv", small / "enrolment.csv")
    return small


def _run(trial: Path, out: Path):
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    with local_cluster(n_workers=2) as c, Client(c) as client:
        return run_trial(trial / "dicom", out, client, secret=SECRET,
                         enrolment=trial / "enrolment.csv")


def _digests(out: Path) -> dict[str, str]:
    """Image outputs and candidate lists (manifests excluded: time/host)."""
    files = [p for p in (out / "work").rglob("*")
             if p.is_file() and p.name != "manifest.json"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


@pytest.fixture(scope="module")
def first(trial, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    return out, _run(trial, out)


def test_visits_and_candidates(first):
    out, summary = first
    names = sorted(v.split("/")[1] for v in summary.visits)
    assert names == ["ses-24h", "ses-M2", "ses-baseline"]
    assert not summary.failures
    assert summary.computed == {"convert": 6, "qc": 6, "compare": 6, "evidence": 6}
    for name in summary.visits:
        doc = json.loads((out / "visits" / name / "visit_summary.json").read_text())
        if name.endswith("baseline"):
            assert doc["status"] == "baseline"
            continue
        kinds = sorted(c["kind"] for c in doc["comparisons"])
        assert kinds == (["baseline", "baseline"] if name.endswith("24h")
                         else ["baseline", "baseline", "previous", "previous"])
        for comp in doc["comparisons"]:
            assert (out / comp["evidence"] / "regcheck.png").is_file()
            flagged = [c for c in comp["candidates"] if c["flagged"]]
            for c in flagged:
                assert (out / comp["evidence"] / f"candidate-{c['id']}.png").is_file()
            assert "protocol_deviations" in comp
            manifest = out / comp["manifest"]
            assert manifest.is_file()
            assert all(c["manifest"] == comp["manifest"] for c in comp["candidates"])
            assert json.loads(manifest.read_text())["stage"] == "compare"
        assert doc["status"] in ("candidates flagged",
                                 "no candidates flagged: full read and sign-off still needed")


def test_rerun_reuses_everything(trial, first):
    out, _ = first
    before = _digests(out)
    again = _run(trial, out)
    assert again.computed == {}
    assert again.reused == {"convert": 6, "qc": 6, "compare": 6, "evidence": 6}
    assert _digests(out) == before


def test_killed_run_resumes_to_identical_outputs(trial, first, tmp_path):
    """SIGKILL the whole run once some comparisons are done; the re-run skips
    finished stages and ends byte-identical to the uninterrupted run."""
    ref_out, _ = first
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_pipeline import _run
        if __name__ == "__main__":
            _run(Path({str(trial)!r}), Path({str(out)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = list((out / "work" / "compare").glob("*/manifest.json"))
        if len(done) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "run finished before it could be killed"
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in (out / "work").glob("*/*/manifest.json")}
    resumed = _run(trial, out)
    assert resumed.reused.get("convert") == 6
    assert resumed.reused.get("compare", 0) >= 2
    assert sum(resumed.computed.values()) + sum(resumed.reused.values()) == 24
    assert finished <= {p.parent.name for p in (out / "work").glob("*/*/manifest.json")}
    assert _digests(out) == _digests(ref_out)


def test_broken_series_does_not_stop_the_visit(trial, tmp_path):
    broken = tmp_path / "trial"
    shutil.copytree(trial, broken)
    victim = sorted((broken / "dicom").glob("*/24h/09_spine_T2w/*"))[3]
    victim.write_bytes(victim.read_bytes()[:2000])
    out = tmp_path / "out"
    summary = _run(broken, out)
    assert any(victim.name in f for f in summary.failures), summary.failures
    v24 = next(v for k, v in summary.visits.items() if k.endswith("24h"))
    doc = json.loads((out / "visits" / next(k for k in summary.visits if k.endswith("24h"))
                      / "visit_summary.json").read_text())
    statuses = {s["contrast"]: s["status"] for s in doc["series"]}
    assert statuses == {"FLAIR": "converted", "T2w": "failed"}
    assert [c["contrast"] for c in doc["comparisons"]] == ["flair"]
    assert doc["not_assessable"] == [s["source"] for s in doc["series"]
                                     if s["status"] == "failed"]
    assert v24["status"] in ("candidates flagged", "incomplete")
