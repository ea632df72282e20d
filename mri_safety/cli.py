"""Command-line interface (typer + rich). Each command is a thin wrapper over
library or pipeline functions; exit codes are documented in ``docs/cli.md``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from mri_safety import __version__

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="mri-safety: MRI safety review pipeline"
)
console = Console(stderr=True)


def _logging(verbose: bool) -> None:
    """Console shows warnings (info with -v); the run log file, when added,
    gets info. Handler levels matter: Dask's loggers set their own levels."""
    handler = RichHandler(console=console, show_path=False, show_time=False)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler],
                        force=True)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        console.print(__version__)
        raise typer.Exit(0)


def visit_order(item: tuple[str, dict[str, Any]]) -> tuple[str, int, bool, float, str]:
    """Sort key of a run summary's visits (``"sub-X/ses-Y"``, summary): each subject's
    visits in time order (:func:`mri_safety.report.safety.visit_time_key`).

    >>> v = {"sub-A/ses-M2": {"days_from_dosing": 61}, "sub-A/ses-baseline":
    ...      {"days_from_dosing": -9}, "sub-A/ses-24h": {"days_from_dosing": 1}}
    >>> [k for k, _ in sorted(v.items(), key=visit_order)]
    ['sub-A/ses-baseline', 'sub-A/ses-24h', 'sub-A/ses-M2']
    >>> v = {"sub-B/ses-M12": {"days_from_dosing": None, "visit_index": 2},
    ...      "sub-B/ses-M2": {"days_from_dosing": None, "visit_index": 1},
    ...      "sub-B/ses-baseline": {"days_from_dosing": None, "visit_index": 0}}
    >>> [k for k, _ in sorted(v.items(), key=visit_order)]
    ['sub-B/ses-baseline', 'sub-B/ses-M2', 'sub-B/ses-M12']
    """
    from mri_safety.report.safety import visit_time_key

    name, v = item
    return name.split("/")[0], *visit_time_key(v), name


@app.command()
def convert(
    dicom_dir: Path = typer.Argument(..., help="DICOM tree (folders, DICOMDIR, .dcm.gz)"),
    out_dir: Path = typer.Argument(..., help="Output BIDS folder"),
    enrolment: Path | None = typer.Option(
        None, "--enrolment", help="CSV: patient_id,dosing_date[,visit_overrides]"
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML overriding configs/"),
    secret_file: Path | None = typer.Option(
        None, "--secret-file", help="Site secret for pseudonyms (default: site secret file)"
    ),
    dicom: bool = typer.Option(False, "--dicom", help="Also write de-identified DICOM copies"),
    workers: int | None = typer.Option(None, "--workers", help="Header-reading processes"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log skipped files too"),
) -> None:
    """Discover, classify, de-identify and convert a DICOM tree to BIDS NIfTI.

    Exit codes: 0 all converted, 8 partial success, 2 nothing converted,
    1 usage/configuration error.
    """
    _logging(verbose)
    from mri_safety.config import load_config
    from mri_safety.dicom.deid import load_secret
    from pipelines.convert import convert_tree

    if not dicom_dir.exists():
        console.print(f"[red]error:[/] {dicom_dir}: no such file or directory", soft_wrap=True)
        raise typer.Exit(1)
    try:
        cfg = load_config(config)
        secret = load_secret(secret_file)
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc

    with Progress(
        TextColumn("converting"), BarColumn(), MofNCompleteColumn(), console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("convert", total=None)
        report = convert_tree(
            dicom_dir, out_dir, enrolment=enrolment, secret=secret, write_dicom=dicom,
            config=cfg, workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )

    table = Table(title=f"conversion report ({out_dir}/conversion_report.tsv)")
    for col in ("status", "source", "classified as", "output / reason"):
        table.add_column(col, overflow="fold")
    for s in report.series:
        what = f"{s.region} {s.contrast}{' +C' if s.post_contrast else ''} {s.acq}".strip()
        detail = s.output or "; ".join(s.errors or s.warnings)
        style = {"converted": "green", "failed": "red"}.get(s.status, "yellow")
        table.add_row(f"[{style}]{s.status}[/]", s.source, what, detail)
    console.print(table)
    # plain, unwrapped lines so each failing file can be found (and grepped)
    for s in report.failed:
        console.print(f"[red]failed:[/] {s.source}: {'; '.join(s.errors)}", soft_wrap=True)
    for p in report.file_problems:
        if p.level == "error":
            console.print(f"[red]error:[/] {p.path}: {p.message}", soft_wrap=True)
    skipped = sum(1 for p in report.file_problems if p.level == "warning")
    if skipped:
        console.print(f"{skipped} file(s) skipped (not DICOM or empty); see the report")
    for msg in report.visit_errors:
        console.print(f"[red]visit error:[/] {msg}", soft_wrap=True)
    console.print(
        f"{len(report.converted)} converted, {len(report.failed)} failed; exit {report.exit_code}"
    )
    raise typer.Exit(report.exit_code)


def _client(scheduler: str | None, cluster: str | None, workers: int | None
            ) -> tuple[Any, Any, int]:
    """(client, cluster, ITK threads per task) for --scheduler / --cluster / the
    local default (one worker per core, cores / workers threads each)."""
    import os

    from distributed import Client

    from pipelines.cluster import batch_cluster, load_profile, local_cluster

    if scheduler:
        return Client(scheduler), None, 1
    if cluster:
        profile = load_profile(cluster)
        c = batch_cluster(profile)
        return Client(c), c, profile.cores
    cores = os.cpu_count() or 1
    threads = max(1, cores // (workers or cores))
    c = local_cluster(n_workers=workers, threads_per_task=threads)
    return Client(c), c, threads


def _run_pipeline(
    dicom_dir: Path, out: Path, enrolment: Path | None, config: Path | None,
    secret_file: Path | None, scheduler: str | None, cluster: str | None,
    workers: int | None, detection_config: Path | None = None,
) -> int:
    from mri_safety.change.params import load_params
    from mri_safety.config import load_config
    from mri_safety.dicom.deid import load_secret
    from pipelines.trial import run_trial

    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    handler = logging.FileHandler(out / "logs" / "run.log")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    cfg = load_config(config)
    detection = load_params(detection_config)
    secret = load_secret(secret_file)
    client, clus, threads = _client(scheduler, cluster, workers)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            summary = run_trial(dicom_dir, out, client, secret=secret, enrolment=enrolment,
                                config=cfg, progress=progress, detection=detection,
                                threads_per_task=threads)
    finally:
        client.close()
        if clus is not None:
            clus.close()
    table = Table(title="visits")
    for col in ("visit", "days from dosing", "flagged", "distinct", "status"):
        table.add_column(col)
    for name, v in sorted(summary.visits.items(), key=visit_order):
        n = v["n_flagged"]
        table.add_row(name, str(v["days_from_dosing"]), str(n),
                      str(v.get("n_flagged_abnormalities", n)), v["status"])
    console.print(table)
    for f in summary.failures:
        console.print(f"[red]failure:[/] {f}", soft_wrap=True)
    console.print(
        f"{len(summary.visits)} visits, {summary.n_flagged} candidates flagged, "
        f"{len(summary.failures)} failures; stages computed {summary.computed}, "
        f"reused {summary.reused}. Log: {out / 'logs' / 'run.log'}"
    )
    return 0 if not summary.failures else 8


@app.command()
def run(
    dicom_dir: Path = typer.Argument(..., help="DICOM tree of the trial"),
    out: Path = typer.Option(..., "--out", help="Output folder"),
    enrolment: Path | None = typer.Option(None, "--enrolment", help="Enrolment CSV"),
    config: Path | None = typer.Option(None, "--config", help="YAML overriding configs/"),
    detection_config: Path | None = typer.Option(
        None, "--detection-config",
        help="Detection parameters YAML (default configs/detection.yaml); changing only "
             "detection parameters re-runs detect and evidence, not registration"),
    secret_file: Path | None = typer.Option(None, "--secret-file", help="Site secret file"),
    scheduler: str | None = typer.Option(None, "--scheduler", help="tcp://host:port"),
    cluster: str | None = typer.Option(
        None, "--cluster", help="slurm|pbs|sge or a profile YAML (configs/cluster/)"
    ),
    workers: int | None = typer.Option(None, "--workers", help="Local workers (default: cores)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole pipeline (convert -> qc -> register -> detect -> evidence ->
    visit summaries) on Dask.

    Re-running skips finished stages. Exit 0 when everything ran, 8 when some
    series or comparisons failed (the summary names them), 1 on usage errors.
    """
    _logging(verbose)
    if scheduler and cluster:
        console.print("[red]error:[/] give --scheduler or --cluster, not both")
        raise typer.Exit(1)
    if not dicom_dir.exists():
        console.print(f"[red]error:[/] {dicom_dir}: no such file or directory", soft_wrap=True)
        raise typer.Exit(1)
    try:
        code = _run_pipeline(dicom_dir, out, enrolment, config, secret_file, scheduler,
                             cluster, workers, detection_config)
    except ValueError as exc:  # invalid configuration: the message names the file
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code)


@app.command()
def compare(
    baseline: Path = typer.Argument(..., help="Baseline NIfTI"),
    followup: Path = typer.Argument(..., help="Follow-up NIfTI"),
    out: Path = typer.Option(..., "--out", help="Output folder"),
    region: str = typer.Option("brain", "--region", help="brain|spine"),
    contrast: str = typer.Option("flair", "--contrast",
                                 help="flair|t2w|pd|t1w|t1ce|dwi|adc|swi|t2starw"),
    extra: list[str] | None = typer.Option(
        None, "--extra-contrast",
        help="Extra pair as BASELINE:FOLLOWUP:CONTRAST (repeatable)",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="ITK and registration threads (default: registration_threads of "
             "configs/detection.yaml); `mri-safety run` uses cores / workers"),
) -> None:
    """Candidate new abnormalities of FOLLOWUP vs BASELINE.

    Writes OUT/candidates.json, candidates.nii.gz (labels in the baseline's
    voxel space), zmap.nii.gz and followup_in_baseline.nii.gz (docs/detection.md).
    """
    _logging(False)
    from mri_safety.change.compare import compare_main

    pairs = []
    for item in extra or []:
        parts = item.split(":")
        if len(parts) != 3:
            console.print(f"[red]error:[/] --extra-contrast {item!r}: expected B:F:CONTRAST")
            raise typer.Exit(1)
        pairs.append((Path(parts[0]), Path(parts[1]), parts[2]))
    try:
        doc = compare_main(baseline, followup, out, region=region, contrast=contrast,
                           extra=pairs, threads=threads)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from exc
    flagged = [c for c in doc["candidates"] if c.get("flagged")]
    console.print(f"{len(doc['candidates'])} candidates, {len(flagged)} flagged; "
                  f"registration {doc.get('registration', {}).get('status')}; "
                  f"written to {out}")


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Output folder"),
    patients: int = typer.Option(2, "--patients", help="Number of patients"),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same trial)"),
    preset: str = typer.Option("small", "--preset", help="small (seconds) or full"),
) -> None:
    """Generate a synthetic trial (DICOM + enrolment + ground truth)."""
    from mri_safety.synth import synth_main

    try:
        path = synth_main(out_dir, patients, seed, preset)
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"synthetic trial written to {path}")


#: synthetic series the default demo keeps (folder names of mri_safety.synth)
DEMO_SERIES = ("01_T1w", "02_FLAIR", "09_spine_T2w")


@app.command()
def demo(
    out: Path = typer.Option(Path("mri-safety-demo"), "--out", help="Output directory"),
    workers: int | None = typer.Option(None, "--workers", help="Local workers"),
    patients: int = typer.Option(2, "--patients", help="Synthetic patients"),
    full: bool = typer.Option(
        False, "--full", help="All synthetic series (default: brain T1w + FLAIR, spine T2w)"),
) -> None:
    """Generate a small synthetic trial and run the pipeline on it (local Dask).

    By default two patients, three visits (baseline, 24h, M2), three series
    (brain 3D T1w, brain FLAIR, cervical spine T2w): new abnormalities at 24h and
    M2 for the first patient, and a 24h visit with nothing new for the second
    (see ``ground_truth/``). A few minutes on 2 cores.
    ``--full`` keeps every synthetic series (T2w, T2*w, DWI, ADC, T1w + Gd too).
    """
    import shutil

    _logging(False)
    from mri_safety.synth import synth_main

    trial = out / "trial"
    if not (trial / "enrolment.csv").exists():
        console.print(f"generating a synthetic trial in {trial} ...")
        try:
            synth_main(trial, patients, 0, "small")
        except (OSError, ValueError) as exc:
            console.print(f"[red]error:[/] {exc}\nThe synthetic anatomy is read from the data "
                          "folder: ../shared/data beside this checkout, or set "
                          "MRI_SAFETY_DATA=/path (see README).", soft_wrap=True)
            raise typer.Exit(1) from exc
        if not full:
            for series in sorted((trial / "dicom").glob("*/*/*")):
                if series.is_dir() and series.name not in DEMO_SERIES:
                    shutil.rmtree(series)
    secret = out / "demo-site-secret"
    if not secret.exists():
        secret.write_bytes(b"mri-safety demo secret: not for real data!")
        secret.chmod(0o600)
    code = _run_pipeline(trial / "dicom", out / "results", trial / "enrolment.csv", None,
                         secret, None, None, workers)
    console.print(f"BIDS tree: {out / 'results' / 'bids'}")
    console.print(f"visit summaries: {out / 'results' / 'visits'}")
    console.print(f"reports (open in a browser): {out / 'results' / 'reports' / 'index.html'}")
    console.print(f"ground truth of the synthetic trial: {trial / 'ground_truth'}")
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
