"""DICOM tree -> de-identified BIDS NIfTI + JSON, with a conversion report.

This is the I/O shell around the pure DICOM stage (:mod:`mri_safety.dicom`):
discover -> split -> exclude (burned-in, secondary capture) -> classify ->
assign visits -> convert -> de-identify -> write. One broken series never stops
the others: every failure becomes a row of the report naming the file and the
problem.

Exit codes of ``mri-safety convert`` (see :func:`ConversionReport.exit_code`):

====  =============================================================
0     every image series found was converted (exclusions by policy,
      localisers and non-DICOM files are listed but are not failures)
8     partial success: some series converted, some failed (like dcm2niix)
2     nothing converted (no DICOM image series found, or all failed)
1     usage or internal error (bad arguments, unreadable config)
====  =============================================================
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from io import BytesIO
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mri_safety import __version__
from mri_safety.config import Config, load_config
from mri_safety.dicom.bids import bids_name
from mri_safety.dicom.classify import Classification, classify_groups
from mri_safety.dicom.deid import Deidentifier, exclusion_reason, load_secret
from mri_safety.dicom.discover import discover, read_dataset
from mri_safety.dicom.records import Problem, SeriesGroup
from mri_safety.dicom.series import split_series
from mri_safety.dicom.volume import ConversionError, Volume, convert_series
from mri_safety.visits import (
    Enrolment,
    VisitAmbiguityError,
    VisitAssignment,
    assign_visits,
    parse_date,
    read_enrolment,
    studies_from_groups,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOTHING = 2
EXIT_PARTIAL = 8


@dataclass
class SeriesReport:
    """One row of the conversion report (PHI-free except ``source``, the
    site's own relative path, which stays on the site side)."""

    key: str
    source: str
    series_number: int | None
    n_instances: int
    status: str  # converted | failed | excluded | skipped
    subject: str = ""
    session: str = ""
    region: str = ""
    contrast: str = ""
    post_contrast: bool = False
    acq: str = ""
    rule: str = ""
    output: str = ""
    split: str = ""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class ConversionReport:
    """Everything :func:`convert_tree` did, and why."""

    series: list[SeriesReport] = field(default_factory=list)
    file_problems: list[Problem] = field(default_factory=list)
    visit_errors: list[str] = field(default_factory=list)

    @property
    def converted(self) -> list[SeriesReport]:
        return [s for s in self.series if s.status == "converted"]

    @property
    def failed(self) -> list[SeriesReport]:
        return [s for s in self.series if s.status == "failed"]

    @property
    def exit_code(self) -> int:
        errors = bool(self.failed) or any(p.level == "error" for p in self.file_problems)
        errors = errors or bool(self.visit_errors)
        if not self.converted:
            return EXIT_NOTHING
        return EXIT_PARTIAL if errors else EXIT_OK

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``conversion_report.json`` and ``conversion_report.tsv``."""
        data = {
            "software": f"mri-safety {__version__}",
            "exit_code": self.exit_code,
            "series": [asdict(s) for s in self.series],
            "file_problems": [asdict(p) for p in self.file_problems],
            "visit_errors": self.visit_errors,
        }
        jpath = out / "conversion_report.json"
        _atomic_write_text(jpath, json.dumps(data, indent=2))
        tpath = out / "conversion_report.tsv"
        cols = ["status", "source", "series_number", "n_instances", "subject", "session",
                "region", "contrast", "post_contrast", "acq", "output", "warnings", "errors"]
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, newline="") as tmp:
            w = csv.writer(tmp, delimiter="\t")
            w.writerow(cols)
            for s in self.series:
                row = asdict(s)
                w.writerow([
                    "; ".join(row[c]) if isinstance(row[c], list) else row[c] for c in cols
                ])
            for p in self.file_problems:
                if p.level != "info":
                    w.writerow([p.level, p.path] + [""] * (len(cols) - 3) + [p.message])
        os.replace(tmp.name, tpath)
        return jpath, tpath


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so a crash
    never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    """Save atomically; header text fields are blanked (no PHI can hide there)."""
    hdr = img.header
    hdr["descrip"] = f"mri-safety {__version__}".encode()[:80]
    hdr["aux_file"] = b""
    hdr["intent_name"] = b""
    hdr["db_name"] = b""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _assign(
    groups: list[SeriesGroup],
    root: Path,
    enrolment: dict[str, Enrolment],
    config: Config,
    report: ConversionReport,
) -> dict[str, VisitAssignment]:
    """Visit per study; a patient whose visits are ambiguous is reported (the
    message names both studies by their source folders) and left out, the
    other patients go on."""
    studies = studies_from_groups(groups, display_name=lambda g: _relative(g.source_dir, root))
    try:
        return assign_visits(studies, enrolment, config.visits)
    except VisitAmbiguityError as exc:
        report.visit_errors.extend(exc.conflicts)
        for msg in exc.conflicts:
            log.error("%s", msg)
        return exc.partial


def _first_study_dates(groups: list[SeriesGroup]) -> dict[str, date | None]:
    """Earliest study date per patient (date-shift reference without dosing)."""
    out: dict[str, date | None] = {}
    for g in groups:
        try:
            d: date | None = parse_date(g.study_date)
        except ValueError:
            d = None
        cur = out.get(g.patient_id)
        if d is not None and (cur is None or d < cur):
            out[g.patient_id] = d
        else:
            out.setdefault(g.patient_id, cur)
    return out


def _sidecar(
    vol: Volume,
    group: SeriesGroup,
    cls: Classification,
    visit: VisitAssignment,
    deid: Deidentifier,
) -> dict[str, Any]:
    side: dict[str, Any] = dict(vol.params)
    side.update(
        {
            "Visit": visit.label,
            "DaysFromDosing": visit.days_from_dosing,
            "SeriesNumber": group.first.series_number,
            "SourceSeriesInstanceUIDHash": deid.hash_uid(group.series_instance_uid),
            "SourceStudyInstanceUIDHash": deid.hash_uid(group.study_instance_uid),
            "SplitIndex": group.split_index,
            "Classification": {
                "region": cls.region,
                "contrast": cls.contrast,
                "post_contrast": cls.post_contrast,
                "acq": cls.acq,
                "orientation": cls.orientation,
                "rule": cls.rule,
                "reasons": list(cls.reasons),
            },
            "ConversionSoftware": "mri-safety",
            "ConversionSoftwareVersion": __version__,
            "ConversionWarnings": [p.message for p in vol.problems],
        }
    )
    return side


def _bval_bvec(vol: Volume) -> tuple[str, str] | None:
    bvals = vol.params.get("_bvals") if isinstance(vol.params, dict) else None
    bvecs = vol.params.get("_bvecs") if isinstance(vol.params, dict) else None
    if bvals is None or bvecs is None:
        return None
    b = " ".join(f"{float(v):g}" for v in bvals) + "\n"
    vec = np.asarray(bvecs, dtype=float).reshape(-1, 3).T
    v = "\n".join(" ".join(f"{x:.6f}" for x in row) for row in vec) + "\n"
    return b, v


@dataclass
class SeriesPlan:
    """Everything needed to convert one series, decided from headers only:
    its classification, visit, BIDS name and date-shift references. Plans are
    picklable, so the pipeline can convert series as separate tasks."""

    group: SeriesGroup
    row: SeriesReport
    cls: Classification
    visit: VisitAssignment
    name: str
    dosing_date: date | None
    first_study_date: date | None


def plan_conversion(
    src: Path | str,
    *,
    deid: Deidentifier,
    enrolment: Path | str | None = None,
    config: Config | None = None,
    workers: int | None = None,
) -> tuple[ConversionReport, list[SeriesPlan]]:
    """Discover, split, exclude, classify, assign visits and name every series
    under ``src`` (headers only). Series that will not be converted get their
    final report row here (excluded / skipped / failed with the reason)."""
    src = Path(src)
    config = config or load_config(None)
    enrol = read_enrolment(Path(enrolment)) if enrolment else {}
    report = ConversionReport()

    found = discover(src, workers=workers)
    report.file_problems.extend(found.problems)
    groups, problems = split_series(found.instances)
    report.file_problems.extend(problems)
    visits = _assign(groups, src, enrol, config, report)

    classes = classify_groups(groups, config.sequences)
    first_dates = _first_study_dates(groups)
    names_used: dict[str, int] = defaultdict(int)
    todo: list[tuple[SeriesGroup, SeriesReport, Classification, VisitAssignment, str]] = []
    for g in groups:
        row = SeriesReport(
            key=g.key,
            source=_relative(g.source_dir, src),
            series_number=g.first.series_number,
            n_instances=len(g.instances),
            status="pending",
            split=g.split_reason,
        )
        report.series.append(row)
        row.warnings.extend(p.message for p in g.problems)
        reason = exclusion_reason(g.first)
        if reason:
            row.status, row.errors = "excluded", [reason]
            continue
        cls = classes[g.key]
        row.region, row.contrast, row.post_contrast = cls.region, cls.contrast, cls.post_contrast
        row.acq, row.rule = cls.acq, cls.rule
        if not cls.classified:
            row.warnings.append("unclassified: " + "; ".join(cls.reasons))
        if cls.contrast == "localizer":
            row.status = "skipped"
            row.warnings.append("localizer: not converted")
            continue
        visit = visits.get(g.study_instance_uid)
        if visit is None:
            row.status = "failed"
            row.errors.append("no visit assigned (see visit errors)")
            continue
        row.warnings.extend(visit.warnings)
        row.subject = deid.pseudonym(g.patient_id)
        row.session = visit.label
        base = bids_name(row.subject, row.session, region=cls.region, acq=cls.acq,
                         contrast=cls.contrast, post_contrast=cls.post_contrast, run=None)
        names_used[base] += 1
        todo.append((g, row, cls, visit, base))

    # run-N only where two series would share a name (numbered in series order)
    counters: dict[str, int] = defaultdict(int)
    plans = []
    for g, row, cls, visit, base in todo:
        run = None
        if names_used[base] > 1:
            counters[base] += 1
            run = counters[base]
        name = bids_name(row.subject, row.session, region=cls.region, acq=cls.acq,
                         contrast=cls.contrast, post_contrast=cls.post_contrast, run=run)
        e = enrol.get(g.patient_id)
        plans.append(SeriesPlan(g, row, cls, visit, name, e.dosing_date if e else None,
                                first_dates.get(g.patient_id)))
    return report, plans


def convert_planned(
    plan: SeriesPlan, out: Path, deid: Deidentifier, write_dicom: bool = False
) -> SeriesReport:
    """Convert one planned series into ``out`` (BIDS-relative paths); never
    raises for bad data: the returned row says converted or failed and why."""
    row = plan.row
    try:
        _convert_one(plan, Path(out), deid, write_dicom)
    except ConversionError as exc:
        row.status = "failed"
        row.errors.append(str(exc))
        log.error("%s", exc)
    except Exception as exc:  # never let one series stop the others
        row.status = "failed"
        row.errors.append(f"{plan.group.first.path}: unexpected {type(exc).__name__}: {exc}")
        log.exception("series %s failed", plan.group.key)
    return row


def convert_tree(
    src: Path | str,
    out: Path | str,
    *,
    enrolment: Path | str | None = None,
    secret: bytes | None = None,
    write_dicom: bool = False,
    config: Config | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConversionReport:
    """Convert every image series under ``src`` into a BIDS tree under ``out``.

    Parameters
    ----------
    src, out
        Input DICOM tree and output folder (created).
    enrolment
        CSV with ``patient_id,dosing_date[,...]`` (see :mod:`mri_safety.visits`).
    secret
        Site secret for pseudonyms and UID remapping; ``None`` = the site
        secret file (:func:`mri_safety.dicom.deid.load_secret`).
    write_dicom
        Also write de-identified DICOM copies under
        ``out/sourcedata/dicom/sub-*/ses-*/<series key>/``.
    config
        Validated configuration (default: the packaged ``configs/``).
    workers
        Header-reading processes (see :func:`~mri_safety.dicom.discover.discover`).
    progress
        Called as ``progress(done, total)`` after each series.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    deid = Deidentifier(secret if secret is not None else load_secret(None))
    report, plans = plan_conversion(src, deid=deid, enrolment=enrolment, config=config,
                                    workers=workers)
    for done, plan in enumerate(plans, start=1):
        convert_planned(plan, out, deid, write_dicom)
        if progress:
            progress(done, len(plans))
    report.write(out)
    return report


def _convert_one(plan: SeriesPlan, out: Path, deid: Deidentifier, write_dicom: bool) -> None:
    g, row, name = plan.group, plan.row, plan.name
    vol = convert_series(g)
    row.warnings.extend(p.message for p in vol.problems if p.level != "error")
    errors = [p.message for p in vol.problems if p.level == "error"]
    if errors:
        raise ConversionError(g.first.path, "; ".join(errors))
    nii = out / f"{name}.nii.gz"
    save_nifti(vol.to_nifti(), nii)
    side = _sidecar(vol, g, plan.cls, plan.visit, deid)
    side = {k: v for k, v in side.items() if not k.startswith("_")}
    _atomic_write_text(out / f"{name}.json", json.dumps(side, indent=2, default=str))
    bb = _bval_bvec(vol)
    if bb:
        _atomic_write_text(out / f"{name}.bval", bb[0])
        _atomic_write_text(out / f"{name}.bvec", bb[1])
    row.output = f"{name}.nii.gz"
    row.status = "converted"
    if write_dicom:
        dest = out / "sourcedata" / "dicom" / f"sub-{row.subject}" / f"ses-{row.session}" / g.key
        for rec in g.instances:
            ds = deid.deidentify(read_dataset(rec), pseudonym=row.subject,
                                 dosing_date=plan.dosing_date,
                                 first_study_date=plan.first_study_date)
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            _atomic_write_bytes(dest / f"{ds.SOPInstanceUID}.dcm", buf.getvalue())
