"""Where the Dask graph runs: a local cluster sized to the machine, an existing
scheduler, or a batch system (SLURM, PBS, SGE) through dask-jobqueue.

Threads are a stage parameter, not an accident of the machine: each worker
runs one task at a time and lets ITK/ANTs/BLAS use ``threads_per_task``
threads, with ``workers x threads_per_task = cores``. The thread variables
are set in each worker's environment *before* it starts (Dask limits
OMP/MKL/OpenBLAS but not ITK; ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
at import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

CLUSTER_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "cluster"


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that pin ITK, ANTs and BLAS to ``threads``."""
    n = str(int(threads))
    return {
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "NUMEXPR_NUM_THREADS": n,
    }


class BatchProfile(BaseModel):
    """A batch-system worker profile (``configs/cluster/<name>.yaml``).

    ``cores`` and ``memory`` are per job; one Dask worker per job runs one task
    at a time with ``cores`` ITK threads. ``walltime`` is the job limit;
    workers retire ``lifetime`` before it (with ``lifetime_stagger`` so they
    do not all restart at once) and the adaptive cluster replaces them, so a
    long run outlives any single job.
    """

    model_config = ConfigDict(extra="forbid")

    system: Literal["slurm", "pbs", "sge"]
    queue: str | None = None
    account: str | None = None
    cores: int = Field(2, ge=1)
    memory: str = "4GiB"
    walltime: str = "01:00:00"
    lifetime: str = "55m"
    lifetime_stagger: str = "4m"
    min_jobs: int = Field(0, ge=0)
    max_jobs: int = Field(4, ge=1)
    local_directory: str | None = None
    log_directory: str | None = None
    job_extra_directives: list[str] = Field(default_factory=list)
    interface: str | None = None


def load_profile(name_or_path: str | Path) -> BatchProfile:
    """Load ``configs/cluster/<name>.yaml`` or a YAML file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CLUSTER_CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: cluster profile not found")
    data = yaml.safe_load(p.read_text()) or {}
    try:
        return BatchProfile.model_validate(data)
    except Exception as exc:
        raise ValueError(f"{p}: invalid cluster profile: {exc}") from exc


#: Dask's nannies start each worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (freed
#: memory goes back to the OS at once). Setting it also switches off glibc's dynamic
#: mmap threshold, so every numpy temporary above 128 KiB becomes a fresh mmap whose
#: pages fault in again: the same 24 QC stages took 9-13 % more CPU in a worker than
#: in a plain process, and -3 to +1 % with the variable unset (2026-11-29, 2 cores;
#: benchmarks/pipeline.py: every stage 8-26 % more CPU in (c) than in (b)). Unset,
#: workers get glibc's defaults, like the serial run; peak RSS is in the benchmark.
WORKER_PRE_SPAWN: dict[str, Any] = {"MALLOC_TRIM_THRESHOLD_": None}
WORKER_DASK_CONFIG: dict[str, Any] = {
    f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_PRE_SPAWN.items()}


def local_cluster(
    n_workers: int | None = None, threads_per_task: int | None = None, **kwargs: Any
) -> Any:
    """A ``distributed.LocalCluster`` with ``n_workers`` single-task workers.

    Default: one worker per core and one ITK thread per worker, which measured
    best here (two workers each letting ITK use 2 threads gave only 1.14x over
    serial; with 1 ITK thread each, 1.19x or better).
    """
    import dask
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    n_workers = n_workers or cores
    threads_per_task = threads_per_task or max(1, cores // n_workers)
    with dask.config.set(WORKER_DASK_CONFIG):  # read by the nannies as they start
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            env=thread_env(threads_per_task),
            dashboard_address=None,
            **kwargs,
        )


def batch_cluster(profile: BatchProfile, *, adaptive: bool = True, **kwargs: Any) -> Any:
    """A dask-jobqueue cluster (SLURM/PBS/SGE) for ``profile``, scaled
    adaptively between ``min_jobs`` and ``max_jobs`` (``adaptive=False``:
    the caller scales it; adaptive scaling would cancel idle jobs)."""
    import dask_jobqueue

    cls = {
        "slurm": dask_jobqueue.SLURMCluster,
        "pbs": dask_jobqueue.PBSCluster,
        "sge": dask_jobqueue.SGECluster,
    }[profile.system]
    prologue = [f"export {k}={v}" for k, v in thread_env(profile.cores).items()]
    # WORKER_DASK_CONFIG for the job's nanny (a dict value merges into Dask's default;
    # the None unsets the variable, as in local_cluster)
    prologue.append(f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{WORKER_PRE_SPAWN!r}"')
    # One Dask thread per job (cores=1 to Dask) while the batch system reserves
    # profile.cores CPUs for ITK's threads.
    reserve_by_system: dict[str, dict[str, Any]] = {
        "slurm": {"job_cpu": profile.cores},
        "pbs": {"resource_spec": f"select=1:ncpus={profile.cores}:mem={profile.memory}"},
        "sge": {"resource_spec": f"h_vmem={profile.memory}",
                "job_extra_directives": [f"-pe smp {profile.cores}",
                                         *profile.job_extra_directives]},
    }
    reserve = reserve_by_system[profile.system]
    # SGE calls the accounting string "project"
    acct = {"project" if profile.system == "sge" else "account": profile.account}
    kwargs = {"job_extra_directives": profile.job_extra_directives, **reserve, **acct, **kwargs}
    cluster = cls(
        queue=profile.queue,
        cores=1,
        processes=1,
        memory=profile.memory,
        walltime=profile.walltime,
        job_script_prologue=prologue,
        worker_extra_args=[
            "--lifetime", profile.lifetime,
            "--lifetime-stagger", profile.lifetime_stagger,
            "--lifetime-restart",
        ],
        local_directory=profile.local_directory,
        log_directory=profile.log_directory,
        interface=profile.interface,
        **kwargs,
    )
    if adaptive:
        cluster.adapt(minimum_jobs=profile.min_jobs, maximum_jobs=profile.max_jobs)
    return cluster
