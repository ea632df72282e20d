"""Worker environment of the embedded LocalCluster (pipelines/cluster.py)."""

from __future__ import annotations

import os


def _env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS",
                                           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}


def test_local_cluster_workers_get_thread_env_and_glibc_malloc_defaults() -> None:
    """Workers run ITK/BLAS with the task's threads, and without Dask's
    MALLOC_TRIM_THRESHOLD_ (it made every stage cost 8-26 % more CPU than in a
    plain process: see WORKER_DASK_CONFIG); Dask's own default is unchanged
    outside the cluster's start."""
    import dask
    from distributed import Client

    from pipelines.cluster import local_cluster

    with local_cluster(n_workers=1, threads_per_task=2) as c, Client(c) as client:
        (env,) = client.run(_env).values()
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "2",
                   "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"}
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") \
        == 65536
