"""A real single-node SLURM (Debian slurm-wlm + munge, started by the test on
loopback) runs pipeline stages through dask-jobqueue's SLURMCluster, and the
outputs are byte-identical to a local run. ``pytest -k slurm`` selects it.

If slurmctld cannot start on a machine, the test skips with the exact error
printed by the start script, and only then.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, need_data

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm_single_node.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/munged needs root on this machine")
    state = tmp_path_factory.mktemp("slurm")
    munged_before = _munged_running()
    proc = subprocess.run(["bash", str(SCRIPT), "start", str(state)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"slurmctld could not start: {proc.stderr.strip()[-800:]}")
    conf = proc.stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield state
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    # the script stops what it started, and only that
    assert _munged_running() == munged_before


def _munged_running() -> bool:
    return subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every non-manifest file, by path relative to root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_slurm_stages_identical_to_local(slurm, tmp_path):
    from distributed import Client

    from pipelines.cache import StageStore, stable_manifest
    from pipelines.cluster import BatchProfile, batch_cluster, local_cluster
    from pipelines.stages import convert_stage

    src = need_data("dicom", "patient-positions")
    series = [src / p for p in ("HFS", "HFP", "HFDL", "HFDR")]
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x00" * 32)

    def run_all(client: Client, root: Path) -> list:
        store = StageStore(root)
        futs = [client.submit(store.run, "convert", convert_stage,
                              {"dicom": s, "secret": secret}, pure=False) for s in series]
        return client.gather(futs)

    profile = BatchProfile(system="slurm", cores=1, memory="3GiB", walltime="00:20:00",
                           min_jobs=0, max_jobs=2, log_directory=str(tmp_path / "logs"),
                           interface="lo")  # scheduler and workers on loopback
    with batch_cluster(profile, adaptive=False) as cluster, Client(cluster) as client:
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=180)
        job_ids = set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values())
        assert None not in job_ids and len(job_ids) == 2, job_ids
        # the job's nanny starts its worker with glibc's malloc defaults (WORKER_DASK_CONFIG)
        assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) \
            == {None}
        on_slurm = run_all(client, tmp_path / "slurm_run")

    with local_cluster(n_workers=2) as cluster, Client(cluster) as client:
        local = run_all(client, tmp_path / "local_run")

    assert [r.digest for r in on_slurm] == [r.digest for r in local]
    for a, b in zip(on_slurm, local, strict=True):
        da, db = _tree_digest(a.path), _tree_digest(b.path)
        assert any(k.endswith(".nii.gz") for k in da)
        assert da == db
        assert stable_manifest(a.manifest) == stable_manifest(b.manifest)


@pytest.mark.slow
def test_slurm_pipeline_identical_to_local(slurm, tmp_path):
    """The trial pipeline (convert -> qc -> register -> detect -> evidence) on SLURM
    workers gives the same image outputs and candidate lists as locally."""
    import shutil

    from distributed import Client

    from mri_safety.synth import synth_main
    from pipelines.cluster import BatchProfile, batch_cluster, local_cluster
    from pipelines.trial import run_trial

    full = tmp_path / "synth"
    synth_main(full, 1, 0, "small")
    trial = tmp_path / "trial"
    for series in (full / "dicom").glob("*/*/02_FLAIR"):
        shutil.copytree(series, trial / "dicom" / series.relative_to(full / "dicom"))
    enrol = full / "enrolment.csv"
    secret = b"slurm-test-secret-0123456789abcd"

    profile = BatchProfile(system="slurm", cores=1, memory="3GiB", walltime="00:30:00",
                           max_jobs=2, log_directory=str(tmp_path / "logs"),
                           interface="lo")
    with batch_cluster(profile, adaptive=False) as cluster, Client(cluster) as client:
        cluster.scale(jobs=2)
        client.wait_for_workers(2, timeout=180)
        on_slurm = run_trial(trial / "dicom", tmp_path / "slurm", client, secret=secret,
                             enrolment=enrol)
    with local_cluster(n_workers=2) as cluster, Client(cluster) as client:
        local = run_trial(trial / "dicom", tmp_path / "local", client, secret=secret,
                          enrolment=enrol)
    assert on_slurm.visits == local.visits
    assert on_slurm.computed == local.computed == {"convert": 3, "qc": 3, "n4": 3, "masks": 2,
                                                   "register": 3, "detect": 3,
                                                   "evidence": 3}
    assert _tree_digest(tmp_path / "slurm" / "work") == _tree_digest(tmp_path / "local" / "work")
    for v in (tmp_path / "local" / "visits").rglob("visit_summary.json"):
        other = tmp_path / "slurm" / v.relative_to(tmp_path / "local")
        assert other.read_text() == v.read_text()
