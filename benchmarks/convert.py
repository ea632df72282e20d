"""Conversion benchmark: mri-safety convert vs dcm2niix, same output kind.

Both tools write gzipped NIfTI + JSON for the same series in the same run,
each in its own child process (peak RSS from ``os.wait4`` of that child).
Python interpreter start-up + imports are measured separately and subtracted
for the "net" ratio, which is the issue's bar (<= 2x dcm2niix on the
384-slice brain-t1-3d series).

Usage: ``python benchmarks/convert.py [--repeats 3]``; prints a table and
writes the "Conversion" section of ``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import write_section  # noqa: E402

DATA = Path(os.environ.get("MRI_SAFETY_DATA", HERE.parents[1] / "shared" / "data"))
CASES = {
    "brain-t1-3d (384 slices)": DATA / "dicom" / "brain-t1-3d" / "dicoms",
    "patient-positions (4 x 35 slices)": DATA / "dicom" / "patient-positions",
}


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 8):
        raise RuntimeError(f"{cmd} failed with status {status}")
    return wall, usage.ru_maxrss / 1024.0


def dcm2niix_exe() -> str:
    exe = shutil.which("dcm2niix")
    if exe is None:
        raise SystemExit("dcm2niix not found: pip install dcm2niix")
    return exe


def enrolment_rows() -> str:
    """One enrolment row per patient with a visit override per study UID."""
    import pydicom

    studies: dict[str, set[str]] = {}
    for d in CASES.values():
        for f in d.rglob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            studies.setdefault(str(ds.PatientID), set()).add(str(ds.StudyInstanceUID))
    labels = ["baseline", "M2", "M4", "M6", "M12"]
    rows = []
    for pid, uids in sorted(studies.items()):
        over = ";".join(f"{u}={labels[i]}" for i, u in enumerate(sorted(uids)))
        rows.append(f"{pid},2030-01-01,,{over}\n")
    return "".join(rows)


def median_run(make_cmd, repeats: int) -> tuple[float, float]:
    walls, rss = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            w, r = run(make_cmd(Path(tmp)))
        walls.append(w)
        rss.append(r)
    return statistics.median(walls), max(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    py = sys.executable
    secret = Path(tempfile.mkdtemp()) / "secret"
    secret.write_bytes(os.urandom(32))

    startup, startup_rss = median_run(
        lambda tmp: [py, "-c", "import pipelines.convert, mri_safety.cli"], args.repeats
    )
    # patient-positions holds four studies of one volunteer on one day: the
    # visit assigner rightly refuses to guess, so the benchmark names them
    enrol = secret.parent / "enrolment.csv"
    enrol.write_text("patient_id,dosing_date,route,visit_overrides\n" + enrolment_rows())
    rows = []
    for name, src in CASES.items():
        ours, ours_rss = median_run(
            lambda tmp, src=src: [py, "-m", "mri_safety.cli", "convert", str(src), str(tmp / "o"),
                                  "--secret-file", str(secret), "--enrolment", str(enrol)],
            args.repeats,
        )
        ref, ref_rss = median_run(
            lambda tmp, src=src: [dcm2niix_exe(), "-z", "y", "-b", "y", "-o", str(tmp), str(src)],
            args.repeats,
        )
        net = ours - startup
        rows.append((name, ours, net, ref, ours / ref, net / ref, ours_rss, ref_rss))

    head = ("| series | mri-safety wall (s) | net of start-up (s) | dcm2niix -z y (s) "
            "| ratio | net ratio (bar <= 2) | peak RSS ours (MiB) | peak RSS dcm2niix (MiB) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | "
                     f"{r[5]:.2f} | {r[6]:.0f} | {r[7]:.0f} |")
    lines.append("")
    lines.append(f"Interpreter start-up + imports (subtracted for 'net'): {startup:.2f} s, "
                 f"{startup_rss:.0f} MiB. Median of {args.repeats} runs each; "
                 f"{platform.node() and 'this machine'}: {os.cpu_count()} cores, "
                 f"Python {platform.python_version()}.")
    text = "\n".join(lines)
    print(text)
    write_section("Conversion (benchmarks/convert.py)", text)


if __name__ == "__main__":
    main()
