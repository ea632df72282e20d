"""Benchmark: the whole trial pipeline (convert -> qc -> n4/masks -> register -> detect ->
evidence -> visit summaries) on a synthetic trial, three ways:

* ``a_serial_itk_all``: one process (``Client(processes=False)``, one task at a
  time), ITK and registration using all cores;
* ``b_serial_1thread``: the same, pinned to ONE core (``sched_setaffinity``),
  ITK, registration and BLAS/OpenMP with one thread (environment set before start);
* ``c_localcluster``: ``pipelines.cluster.local_cluster()`` defaults (one
  single-task worker process per core, one ITK thread each), as ``mri-safety run``.

Each configuration runs in its own subprocess on a fresh output folder (no
cache hits). Wall time; CPU utilisation = CPU seconds of the run and all its
worker processes / (wall x cores); peak RSS per process (the driver for a/b, each
worker for c); per-stage CPU seconds summed from the manifests' ``cpu_s`` (CPU
time of the worker process while the stage ran); 'outside stages' = CPU of the
run not spent in a stage (imports and start of the processes, Dask scheduler,
nannies and worker loops, the driver).

Before each round, :func:`pair_slowdown` measures how much the two cores slow
each other down (a fixed workload alone vs two copies at once, CPU seconds):
the ceiling of (c) over (b) is 2 / that factor.

With ``--slurm-series 02_FLAIR`` it also starts a real single-node SLURM
(``scripts/slurm_single_node.sh``, root) and runs that subset with one and
then two one-core worker jobs (throughput scaling).

Usage: ``python benchmarks/pipeline.py [--patients 1] [--repeat 3]
[--series 01_T1w,02_FLAIR,...] [--slurm-series 02_FLAIR] [--no-write]``; with
``--repeat N`` the configurations run interleaved N times and the median run of
each is reported (the machine's speed drifts with other jobs on the host).
Writes the ``Pipeline`` section of ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

SECRET = b"benchmark-secret-0123456789abcdef"
#: a full visit as the issue defines it: 3 brain + 2 spine series
DEFAULT_SERIES = ("01_T1w", "02_FLAIR", "03_T2w", "09_spine_T2w", "10_spine_T1w")
CONFIGS = ("a_serial_itk_all", "b_serial_1thread", "c_localcluster")


def make_trial(out: Path, patients: int, series: tuple[str, ...], name: str = "trial") -> Path:
    """Synthetic trial (seed 0, preset small) restricted to ``series``."""
    from mri_safety.synth import synth_main

    full = out / "synth"
    if not (full / "enrolment.csv").exists():
        synth_main(full, patients, 0, "small")
    trial = out / name
    for s in (full / "dicom").glob("*/*/*"):
        if s.name in series:
            shutil.copytree(s, trial / "dicom" / s.relative_to(full / "dicom"))
    shutil.copy(full / "enrolment.csv", trial / "enrolment.csv")
    return trial


def run_one(config: str, trial: Path, out: Path) -> dict:
    """Run one configuration in THIS process (called in a subprocess)."""
    from distributed import Client

    from pipelines.cluster import local_cluster
    from pipelines.trial import run_trial

    cores = os.cpu_count() or 1
    kw = {"secret": SECRET, "enrolment": trial / "enrolment.csv"}
    t0 = time.perf_counter()
    worker_rss: list[float] = []
    if config == "c_localcluster":
        with local_cluster() as c, Client(c) as client:
            summary = run_trial(trial / "dicom", out, client, **kw)
            rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            worker_rss = [v / 1024 for v in rss.values()]
            workers = len(rss)
    else:
        if config == "b_serial_1thread":
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
            threads = 1
        else:
            threads = cores
        with Client(processes=False, n_workers=1, threads_per_worker=1,
                    dashboard_address=None) as client:
            summary = run_trial(trial / "dicom", out, client, threads_per_task=threads, **kw)
        workers = 1
    wall = time.perf_counter() - t0
    stage_s: dict[str, float] = {}
    each: dict[str, float] = {}  # "stage/digest" -> CPU s (same key = same work in a, b, c)
    for m in (out / "work").glob("*/*/manifest.json"):
        doc = json.loads(m.read_text())
        stage_s[doc["stage"]] = stage_s.get(doc["stage"], 0.0) + doc.get("cpu_s", 0.0)
        each[f"{doc['stage']}/{doc['digest']}"] = doc.get("cpu_s", 0.0)
    return {"wall": wall, "computed": summary.computed, "failures": summary.failures,
            "visits": len(summary.visits),
            "followups": sum(1 for v in summary.visits if not v.endswith("baseline")),
            "workers": workers, "worker_rss_mib": worker_rss, "stage_s": stage_s,
            "stage_each": each,
            "self_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(config: str, trial: Path, out: Path) -> dict:
    """Run ``config`` in a subprocess; add its CPU time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res_file = out.parent / f"{config}.json"
    t0 = time.perf_counter()
    # (b) is one thread throughout: ITK and BLAS/OpenMP get one thread from the
    # start (set after numpy is imported, a pinned process keeps a 2-thread
    # OpenBLAS pool on one core: its threads spin against each other, 40x slower
    # on the spine stages); (a) gets all cores; (c) sets its workers' own
    from pipelines.cluster import thread_env

    env = dict(os.environ)
    if config != "c_localcluster":
        env.update(thread_env(1 if config == "b_serial_1thread" else os.cpu_count() or 1))
    subprocess.run([sys.executable, __file__, "--_child", config, str(trial), str(out),
                    str(res_file)], check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(res_file.read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res.update({"process_wall": wall, "cpu_s": cpu,
                "util": cpu / (res["wall"] * (os.cpu_count() or 1))})
    if not res["worker_rss_mib"]:
        res["worker_rss_mib"] = [res["self_rss_mib"]]
    return res


def spin(rounds: int = 12) -> float:
    """A fixed amount of stage-like work (scipy.ndimage filters, a distance
    transform, percentiles and a little pure Python on a volume the size of a
    synthetic 2D brain series); returns the CPU seconds it took."""
    import numpy as np
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    vol = rng.normal(1.0, 0.1, (100, 115, 38)).astype(np.float32)
    t0 = time.process_time()
    for _ in range(rounds):
        g = ndi.gaussian_filter(vol, 1.5)
        ndi.median_filter(g, size=3)
        ndi.distance_transform_edt(g > 1.0)
        np.percentile(g, [5, 50, 95])
        d: dict[int, float] = {}
        for i in range(100_000):
            d[i % 997] = d.get(i % 997, 0.0) + i * 0.5
    return time.process_time() - t0


def pair_slowdown() -> tuple[float, float]:
    """CPU seconds of :func:`spin` in one process alone, then the mean of two
    processes running it at the same time. On an idle 2-core machine with
    independent cores the two are equal; a ratio above 1 means the two cores
    slow each other down (shared physical core, memory bandwidth, other
    guests on the host), which bounds what two workers can gain over one."""
    cmd = [sys.executable, __file__, "--_spin"]
    alone = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pair = [float(pr.communicate()[0]) for pr in procs]
    return alone, sum(pair) / 2


def slurm_scaling(trial: Path, tmp: Path) -> str:
    """Throughput of the pipeline on a real single-node SLURM
    (scripts/slurm_single_node.sh, needs root) with 1 and then 2 one-core
    worker jobs; returns a markdown paragraph (or why it could not run)."""
    from distributed import Client

    from pipelines.cluster import BatchProfile, batch_cluster
    from pipelines.trial import run_trial

    script = REPO / "scripts" / "slurm_single_node.sh"
    state = tmp / "slurm-state"
    proc = subprocess.run(["bash", str(script), "start", str(state)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        return f"SLURM scaling not measured: slurmctld did not start ({proc.stderr[-300:]})"
    os.environ["SLURM_CONF"] = proc.stdout.strip().split("=", 1)[1]
    rows = []
    try:
        for n in (1, 2):
            profile = BatchProfile(system="slurm", cores=1, memory="3GiB", walltime="00:30:00",
                                   max_jobs=n, log_directory=str(tmp / f"slurm-logs-{n}"))
            with batch_cluster(profile, adaptive=False) as cluster, Client(cluster) as client:
                cluster.scale(jobs=n)
                client.wait_for_workers(n, timeout=180)
                t0 = time.perf_counter()
                summary = run_trial(trial / "dicom", tmp / f"slurm-{n}", client, secret=SECRET,
                                    enrolment=trial / "enrolment.csv")
                wall = time.perf_counter() - t0
            runs = sum(summary.computed.values())
            pairs = summary.computed.get("detect", 0)
            rows.append((n, wall, runs, pairs))
            print(f"slurm {n} worker(s): {wall:.1f} s, {summary.computed}", flush=True)
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], timeout=60)
    (n1, w1, r1, p1), (n2, w2, r2, p2) = rows
    return (f"SLURM throughput (real single-node slurm-wlm via scripts/slurm_single_node.sh, "
            f"dask-jobqueue, one-core worker jobs, same trial subset {trial.name}: "
            f"{p1} comparisons, {r1} stage runs): 1 worker {w1:.1f} s "
            f"({60 * p1 / w1:.1f} comparisons/min), 2 workers {w2:.1f} s "
            f"({60 * p2 / w2:.1f} comparisons/min): **{w1 / w2:.2f}x** with 2 workers on "
            f"{os.cpu_count()} cores.")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1)
    ap.add_argument("--series", default=",".join(DEFAULT_SERIES))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all configurations, interleaved; medians are reported")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--slurm-series", default="",
                    help="also measure SLURM 1 vs 2 workers on these series (needs root)")
    ap.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_spin", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._spin:
        print(spin())
        return
    if args._child:
        config, trial, out, res_file = args._child
        Path(res_file).write_text(json.dumps(run_one(config, Path(trial), Path(out))))
        return

    series = tuple(args.series.split(","))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        t0 = time.perf_counter()
        trial = make_trial(Path(tmp), args.patients, series)
        t_synth = time.perf_counter() - t0
        # configurations interleaved, ``--repeat`` rounds: the machine's speed
        # drifts (other jobs on the host), so each ratio compares medians of runs
        # made in the same stretch of time
        runs: dict[str, list[dict]] = {c: [] for c in args.configs.split(",")}
        slow: list[tuple[float, float]] = []
        for rep in range(args.repeat):
            slow.append(pair_slowdown())
            print(f"round {rep + 1}: spin alone {slow[-1][0]:.2f} CPU s, two at once "
                  f"{slow[-1][1]:.2f} CPU s each ({slow[-1][1] / slow[-1][0]:.2f}x)", flush=True)
            for config in runs:
                r = measure(config, trial, Path(tmp) / f"{config}-{rep}" / "out")
                runs[config].append(r)
                print(f"{config} (round {rep + 1}): wall {r['wall']:.1f} s, CPU "
                      f"{r['cpu_s']:.1f} s, util {100 * r['util']:.0f} %, computed "
                      f"{r['computed']}", flush=True)
        results = {c: sorted(rs, key=lambda r: r["wall"])[len(rs) // 2] for c, rs in runs.items()}
        slurm = ""
        if args.slurm_series:
            sub = make_trial(Path(tmp), args.patients, tuple(args.slurm_series.split(",")),
                             name="slurm-trial")
            slurm = slurm_scaling(sub, Path(tmp))
    load1 = os.getloadavg()
    cores = os.cpu_count() or 1

    rows = ["| configuration | wall s | CPU s | CPU utilisation | peak RSS per worker MiB "
            "| wall per follow-up visit s | 2-core s per follow-up visit "
            "| stage CPU s (n4+masks / register / detect / evidence / volume / morphometry "
            "/ convert+qc) | CPU s outside stages |",
            "|---|---|---|---|---|---|---|---|---|"]
    for config, r in results.items():
        st = r["stage_s"]
        per = r["wall"] / max(1, r["followups"])
        rows.append(
            f"| {config} | {r['wall']:.1f} | {r['cpu_s']:.1f} | {100 * r['util']:.0f} % "
            f"| {', '.join(f'{v:.0f}' for v in r['worker_rss_mib'])} | {per:.1f} "
            f"| {per * cores:.1f} | {st.get('n4', 0) + st.get('masks', 0):.0f} / "
            f"{st.get('register', 0):.0f} / {st.get('detect', 0):.0f} / "
            f"{st.get('evidence', 0):.0f} / {st.get('volume', 0):.0f} / "
            f"{st.get('morphometry', 0):.0f} / {st.get('convert', 0) + st.get('qc', 0):.0f} "
            f"| {r['cpu_s'] - sum(st.values()):.0f} |")
    lines = ["\n".join(rows), ""]
    if args.repeat > 1:
        walls = "; ".join(c + " " + ", ".join(f"{r['wall']:.1f}" for r in rs) + " s"
                          for c, rs in runs.items())
        lines.append(f"Median of {args.repeat} interleaved rounds (the row shown is the "
                     f"median run); walls of every round: {walls}.\n")
    a, b, c = (results.get(k) for k in CONFIGS)
    if a and b and c:
        # speed-ups paired within each round (same stretch of machine time), median
        # over rounds: the machine drifts between rounds, a ratio of medians would mix them
        def paired(ref: str) -> list[float]:
            return [x["wall"] / y["wall"] for x, y in zip(runs[ref], runs["c_localcluster"],
                                                         strict=True)]

        pb, pa = paired("b_serial_1thread"), paired("a_serial_itk_all")
        sb, sa = statistics.median(pb), statistics.median(pa)
        per_visit = c["wall"] * cores / max(1, c["followups"])
        if len(pb) > 1:
            lines.append("Speed-ups per round: (c) over (b) "
                         + ", ".join(f"{v:.2f}" for v in pb) + "; over (a) "
                         + ", ".join(f"{v:.2f}" for v in pa) + " (median below).\n")
            lines.append(f"{cores}-core s per follow-up visit with (c), per round: " + ", ".join(
                f"{r['wall'] * cores / max(1, r['followups']):.1f}"
                for r in runs["c_localcluster"]) + ".\n")
        rss = max(max(r["worker_rss_mib"]) for r in results.values())
        lines.append(
            f"Speed-up of (c) over (b): **{sb:.2f}x** (bar >= 1.8x: "
            f"{'met' if sb >= 1.8 else 'NOT met'}); over (a): **{sa:.2f}x** (bar >= 1.1x: "
            f"{'met' if sa >= 1.1 else 'NOT met'}). A follow-up visit costs "
            f"{per_visit:.1f} s of {cores}-core time with (c) (bar <= 60 s: "
            f"{'met' if per_visit <= 60 else 'NOT met'}; CPU seconds per follow-up visit, "
            f"less sensitive to other jobs on the machine: "
            f"{c['cpu_s'] / max(1, c['followups']):.0f} s). Peak RSS per worker "
            f"{rss:.0f} MiB (bar <= 2048: {'met' if rss <= 2048 else 'NOT met'}).")
    if "b_serial_1thread" in runs and "c_localcluster" in runs:
        # the same stage (same key: same inputs, parameters, one thread) in (c) and (b)
        infl = []
        for rb, rc in zip(runs["b_serial_1thread"], runs["c_localcluster"], strict=True):
            common = [k for k in rc["stage_each"] if rb["stage_each"].get(k, 0) > 0.2]
            infl.append(sum(rc["stage_each"][k] for k in common)
                        / sum(rb["stage_each"][k] for k in common))
        lines.append(
            "\nThe same stages (same keys, one thread each) took " + ", ".join(
                f"{x:.2f}x" for x in infl) + " the CPU seconds in (c) that they took in (b) "
            "(per round; stages of >= 0.2 CPU s in (b)).")
    if slow:
        f = [b / a for a, b in slow]
        lines.append(
            "\nTwo cores at once (measured before each round: a fixed scipy/numpy + Python "
            "workload, CPU s in one process alone vs each of two processes running it "
            "together): " + ", ".join(f"{a:.2f} -> {b:.2f} s ({x:.2f}x)"
                                      for (a, b), x in zip(slow, f, strict=True))
            + f". With the cores slowing each other by {statistics.median(f):.2f}x, two "
            f"workers can be at most {2 / statistics.median(f):.2f}x faster than one.")
    first = next(iter(results.values()))
    lines.append(
        f"\nTrial: `python benchmarks/pipeline.py --patients {args.patients} "
        f"--repeat {args.repeat}`: "
        f"{args.patients} synthetic patient(s) x {first['visits'] // max(1, args.patients)} "
        f"visits (baseline, 24h, M2), series {', '.join(series)} "
        f"({sum('spine' not in x for x in series)} brain + "
        f"{sum('spine' in x for x in series)} spine); {sum(first['computed'].values())} stage runs "
        f"each ({first['computed']}). Each follow-up is compared with baseline and, from M2 "
        f"on, with the previous visit, so 'per follow-up visit' averages 24h (1 comparison "
        f"per series) and M2 (2 per series). Synthetic trial generation ({t_synth:.0f} s) "
        f"not included. Load average before / after: "
        f"{' '.join(f'{x:.2f}' for x in load0)} / {' '.join(f'{x:.2f}' for x in load1)} on "
        f"{cores} cores shared with other agents' jobs: times are upper bounds when the "
        f"load is above ~1.")
    if slurm:
        lines.append("\n" + slurm)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        from _results import write_section

        write_section("Pipeline (benchmarks/pipeline.py)", body)


if __name__ == "__main__":
    main()
