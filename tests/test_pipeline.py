"""The trial pipeline on a small synthetic trial: visit summaries, resume
without recomputation, a changed review threshold re-running only detect and
evidence, the detect stage equal to ``mri-safety compare``, a killed run and a
killed worker both ending byte-identical to an uninterrupted run, and a broken
series that does not stop its visit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import small_synthetic_trial

pytestmark = pytest.mark.slow

SECRET = b"pipeline-test-secret-0123456789"
KEEP = ("02_FLAIR", "09_spine_T2w")


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """One synthetic patient (baseline, 24h, M2), FLAIR + spine T2w only."""
    return small_synthetic_trial(tmp_path_factory, KEEP)


STAGES = ("convert", "qc", "n4", "register", "detect", "evidence")
#: 2 series x 3 visits; 3 comparisons per series (24h and M2 vs baseline, M2 vs
#: 24h); brain masks for the brain series that are a comparison's baseline
#: (FLAIR of baseline and 24h; a spine pair's region is the canal its registration finds)
ALL6 = {**dict.fromkeys(STAGES, 6), "masks": 2}


def _run(trial: Path, out: Path, client=None, **kwargs):
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    if client is not None:
        return run_trial(trial / "dicom", out, client, secret=SECRET,
                         enrolment=trial / "enrolment.csv", **kwargs)
    with local_cluster(n_workers=2) as c, Client(c) as client:
        return run_trial(trial / "dicom", out, client, secret=SECRET,
                         enrolment=trial / "enrolment.csv", **kwargs)


def _digests(out: Path) -> dict[str, str]:
    """Image outputs and candidate lists (manifests excluded: time/host)."""
    files = [p for p in (out / "work").rglob("*")
             if p.is_file() and p.name != "manifest.json"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(files)}


def _keys(out: Path) -> set[str]:
    """stage/digest of every finished stage output."""
    return {str(p.parent.relative_to(out / "work"))
            for p in (out / "work").glob("*/*/manifest.json")}


@pytest.fixture(scope="module")
def first(trial, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    return out, _run(trial, out)


def test_visits_and_candidates(first):
    out, summary = first
    names = sorted(v.split("/")[1] for v in summary.visits)
    assert names == ["ses-24h", "ses-M2", "ses-baseline"]
    assert not summary.failures
    assert summary.computed == ALL6
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
            # montage rows name the compared sessions (the reference is the previous
            # visit for kind "previous", never labelled "baseline" then)
            ev = json.loads((out / comp["evidence"] / "manifest.json").read_text())
            ref = ev["parameters"]["compared"][0]
            assert ("ses-baseline" in ref) == (comp["kind"] == "baseline"), (comp["kind"], ref)
            flagged = [c for c in comp["candidates"] if c["flagged"]]
            for c in flagged:
                assert (out / comp["evidence"] / f"candidate-{c['id']}.png").is_file()
            assert "protocol_deviations" in comp
            manifest = out / comp["manifest"]
            assert manifest.is_file()
            assert all(c["manifest"] == comp["manifest"] for c in comp["candidates"])
            assert json.loads(manifest.read_text())["stage"] == "detect"
            assert json.loads((out / comp["register_manifest"]).read_text())["stage"] == \
                "register"
        assert doc["status"] in ("candidates flagged",
                                 "no candidates flagged: full read and sign-off still needed")
        # findings across visits: every flagged candidate vs baseline has a stable
        # finding ID, listed in the visit's findings with its volume at this visit
        fids = {f["finding_id"]: f for f in doc.get("findings", [])}
        for comp in doc["comparisons"]:
            for c in comp["candidates"]:
                if comp["kind"] == "baseline" and c["flagged"]:
                    assert c["finding_id"] in fids
                    assert fids[c["finding_id"]]["volume_mm3_by_visit"][doc["visit"]] == \
                        c["volume_mm3"]
                if comp["kind"] == "previous":
                    assert "finding_id" not in c


def test_killed_worker_run_completes_identically(trial, first, tmp_path):
    """SIGKILL one worker process while it runs a stage: the nanny restarts it,
    the scheduler re-runs its task elsewhere, the run completes without
    failures and every output is byte-identical to the uninterrupted run."""
    import threading

    from distributed import Client

    from pipelines.cluster import local_cluster

    ref_out, _ = first
    out = tmp_path / "out"
    killed: list[int] = []

    def killer(client: Client) -> None:
        deadline = time.time() + 900
        while time.time() < deadline and not killed:
            if list((out / "work" / "register").glob("*/manifest.json")):
                busy = [w for w, keys in client.processing().items()
                        if any("_run_register" in str(k) or "_run_detect" in str(k)
                               for k in keys)]
                if busy:
                    pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.2)

    with local_cluster(n_workers=2) as c, Client(c) as client:
        before = set(client.run(os.getpid).values())
        t = threading.Thread(target=killer, args=(client,), daemon=True)
        t.start()
        summary = _run(trial, out, client=client)
        t.join(timeout=5)
        after = set(client.run(os.getpid).values())
    assert killed and killed[0] in before and killed[0] not in after
    assert not summary.failures, summary.failures
    # every stage ran in this run (out started empty); a stage output counts as
    # reused only when the killed task had committed it just before the kill
    done = {s: summary.computed.get(s, 0) + summary.reused.get(s, 0)
            for s in {*ALL6, *summary.computed, *summary.reused}}
    assert done == ALL6, (summary.computed, summary.reused)
    assert sum(summary.reused.values()) <= 1, summary.reused
    assert not list((out / "work").glob("*/.tmp-*"))
    assert _keys(out) == _keys(ref_out), "stage keys differ: code edited during the test?"
    assert _digests(out) == _digests(ref_out)


def test_rerun_reuses_everything(trial, first):
    out, _ = first
    before = _digests(out)
    again = _run(trial, out)
    assert again.computed == {}
    assert again.reused == ALL6
    assert _digests(out) == before


def test_review_threshold_change_reruns_only_detection(trial, first, tmp_path):
    """A detection config that changes only ``review_fwe_alpha`` (given to
    ``mri-safety run --detection-config``) reuses convert, qc and register and
    recomputes detect (and evidence where the flagged candidates changed)."""
    import yaml

    from mri_safety.change.params import DEFAULT_FILE

    ref_out, _ = first
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    cfg = yaml.safe_load(DEFAULT_FILE.read_text())
    assert cfg["review_fwe_alpha"] != 0.01
    cfg["review_fwe_alpha"] = 0.01
    (tmp_path / "detection.yaml").write_text(yaml.safe_dump(cfg))
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "mri_safety.cli", "run", str(trial / "dicom"), "--out", str(out),
         "--enrolment", str(trial / "enrolment.csv"), "--secret-file", str(secret),
         "--workers", "2", "--detection-config", str(tmp_path / "detection.yaml")],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run_summary.json").read_text())
    assert run["reused"]["convert"] == run["reused"]["qc"] == run["reused"]["register"] == 6
    assert run["computed"]["detect"] == 6 and "detect" not in run["reused"]
    assert run["computed"].keys() <= {"detect", "evidence"}
    assert run["computed"].get("evidence", 0) + run["reused"].get("evidence", 0) == 6
    # the same register folders, new detect folders with the new threshold
    dirs = {st: {p.parent.name for p in (out / "work" / st).glob("*/manifest.json")}
            for st in STAGES}
    ref = {st: {p.parent.name for p in (ref_out / "work" / st).glob("*/manifest.json")}
           for st in STAGES}
    assert dirs["register"] == ref["register"]
    assert len(dirs["detect"] - ref["detect"]) == 6
    changed_flags = 0
    for name in run["visits"]:
        doc = json.loads((out / "visits" / name / "visit_summary.json").read_text())
        old = json.loads((ref_out / "visits" / name / "visit_summary.json").read_text())
        for new_c, old_c in zip(doc["comparisons"], old["comparisons"], strict=True):
            assert new_c["register_manifest"] == old_c["register_manifest"]
            m = json.loads((out / new_c["manifest"]).read_text())
            assert m["parameters"]["detection"]["review_fwe_alpha"] == 0.01
            assert "registration_threads" not in m["parameters"]["detection"]
            cands = json.loads((out / new_c["manifest"]).parent.joinpath(
                "candidates.json").read_text())
            old_cands = json.loads((ref_out / old_c["manifest"]).parent.joinpath(
                "candidates.json").read_text())
            assert cands["parameters"]["z_review"] > old_cands["parameters"]["z_review"]
            # same z-map (registration and noise model untouched), new threshold
            assert sorted(c["peak_z"] for c in cands["candidates"]) == sorted(
                c["peak_z"] for c in old_cands["candidates"])
            changed_flags += ([c["flagged"] for c in cands["candidates"]]
                              != [c["flagged"] for c in old_cands["candidates"]])
            zmap = "zmap.nii.gz"
            assert ((out / new_c["manifest"]).parent / zmap).read_bytes() == \
                ((ref_out / old_c["manifest"]).parent / zmap).read_bytes()
    # evidence is content-addressed: recomputed exactly where the flagged list changed
    assert run["computed"].get("evidence", 0) >= changed_flags


def test_detect_stage_equals_compare_command(first, tmp_path):
    """The register + detect stages write what ``mri-safety compare`` writes
    (docs/detection.md "Outputs") for the same pair, byte for byte, whatever the
    thread count: the pipeline ran with one ITK thread per task
    (threads_per_task=1), ``compare`` runs with two here. (Until 2026-12-06 N4
    depended on the process's thread count and this held only with ``threads=1``.)"""

    from mri_safety.change.compare import compare_main

    out, _ = first
    doc = json.loads(next((out / "visits").glob("*/ses-M2/visit_summary.json")).read_text())
    comps = [c for c in doc["comparisons"] if c.get("reference_visit") == "baseline"]
    assert {c["region"] for c in comps} == {"brain", "spine"}
    for comp in comps:
        cmp = tmp_path / comp["region"]
        compare_main(out / "bids" / comp["baseline_name"], out / "bids" / comp["followup_name"],
                     cmp, region=comp["region"], contrast=comp["contrast"], threads=2)
        stage_dir = (out / comp["manifest"]).parent
        for name in ("candidates.nii.gz", "zmap.nii.gz", "followup_in_baseline.nii.gz"):
            assert (cmp / name).read_bytes() == (stage_dir / name).read_bytes(), \
                (comp["region"], name)
        # candidates.json records the thread count it ran with; all else is identical
        got, ref = (json.loads((d / "candidates.json").read_text()) for d in (cmp, stage_dir))
        assert (got["parameters"].pop("registration_threads"),
                ref["parameters"].pop("registration_threads")) == (2, 1)
        assert got == ref, comp["region"]


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
        done = list((out / "work" / "register").glob("*/manifest.json"))
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
    assert resumed.reused.get("register", 0) >= 2
    assert sum(resumed.computed.values()) + sum(resumed.reused.values()) == sum(ALL6.values())
    assert resumed.computed.get("register", 0) <= 4
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
