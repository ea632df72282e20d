"""Benchmark: brain pair (N4 + masks + rigid + resample), wall time, peak RSS and TRE.

The pair: ../shared/data/dicom/brain-t1-3d converted by the project's DICOM
stage, resampled to 1 mm (baseline), and the same head moved by a known rigid
transform (7/-4/3 deg, 10/-6/4 mm) with a bias field and Rician noise
(follow-up). Each method runs in its own subprocess (honest peak RSS via
``resource.getrusage`` of the child):

* ``ours``: the project default (N4 on both, template masks on the baseline,
  SimpleITK rigid with the mask, resample the follow-up onto the baseline).
* ``ants_synquick_r``: same preprocessing, rigid by antspyx
  ``antsRegistrationSyNQuick[r]``.
* ``sitk_default``: same preprocessing, a plain SimpleITK rigid: Euler3D,
  Mattes MI 50 bins, RegularStepGradientDescent, ITK shrink 4/2/1 with
  smoothing 2/1/0 voxels, 5 % random sampling, geometry-centred initialiser,
  no mask.

Usage: ``python benchmarks/register.py [--threads 2] [--no-write]``; prints a
table and appends/replaces the ``## Registration (brain pair)`` section of
``benchmarks/results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MRI_SAFETY_DATA", REPO.parent / "shared" / "data")).resolve()
SECTION = "## Registration (brain pair)"


def make_pair(out: Path) -> None:
    """Write baseline.nii.gz, followup.nii.gz and true.tfm (fixed -> moving) to ``out``."""
    import numpy as np
    import SimpleITK as sitk

    from mri_safety.dicom.series import load_series_dir
    from mri_safety.dicom.volume import convert_series
    from mri_safety.register.simulate import known_motion
    from mri_safety.register.transforms import nib_to_sitk

    groups = load_series_dir(DATA / "dicom" / "brain-t1-3d" / "dicoms")
    img = nib_to_sitk(convert_series(groups[0]).to_nifti(), np.float32)
    size = [int(round(s * p)) for s, p in zip(img.GetSize(), img.GetSpacing(), strict=False)]
    img = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        (1.0, 1.0, 1.0), img.GetDirection(), 0.0, sitk.sitkFloat32)
    head = sitk.OtsuThreshold(img, 0, 1)
    lab = sitk.LabelShapeStatisticsImageFilter()
    lab.Execute(head)
    out_mv, true = known_motion(img, lab.GetCentroid(1))
    sitk.WriteImage(img, str(out / "baseline.nii.gz"))
    sitk.WriteImage(out_mv, str(out / "followup.nii.gz"))
    sitk.WriteTransform(true, str(out / "true.tfm"))


def run_method(method: str, workdir: Path, threads: int) -> dict[str, float | str]:
    """Run one method in this (child) process; return timings and TRE."""
    import numpy as np
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    from mri_safety.preprocess.bias import n4_correct
    from mri_safety.preprocess.masks import brain_masks
    from mri_safety.register.rigid import RigidParams, register, resample
    from mri_safety.register.transforms import displacement_mm, mask_points

    fixed = sitk.ReadImage(str(workdir / "baseline.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(workdir / "followup.nii.gz"), sitk.sitkFloat32)
    t_true = sitk.ReadTransform(str(workdir / "true.tfm"))
    cpu = time.process_time  # CPU seconds of this process, all threads
    t0, c0 = time.perf_counter(), cpu()
    fc, _ = n4_correct(fixed)
    mc, _ = n4_correct(moving)
    t_n4, c_n4 = time.perf_counter(), cpu()
    mask = brain_masks(fc).brain
    t_mask, c_mask = time.perf_counter(), cpu()
    if method == "ours":
        tr = register(fc, mc, mask, params=RigidParams(threads=threads)).transform
    elif method == "ants_synquick_r":
        tr = register(fc, mc, mask, params=RigidParams(
            backend="ants", ants_type="antsRegistrationSyNQuick[r]")).transform
    elif method == "sitk_default":
        reg = sitk.ImageRegistrationMethod()
        reg.SetNumberOfThreads(threads)
        reg.SetMetricAsMattesMutualInformation(50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.05, 42)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, 0.5)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        init = sitk.CenteredTransformInitializer(
            fc, mc, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg.SetInitialTransform(init, inPlace=True)
        reg.Execute(fc, mc)
        tr = init
    else:
        raise ValueError(method)
    t_reg, c_reg = time.perf_counter(), cpu()
    resample(mc, fc, tr)
    t_end, c_end = time.perf_counter(), cpu()
    d = displacement_mm(tr, t_true, mask_points(mask))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return {"method": method, "wall_s": t_end - t0, "n4_s": t_n4 - t0, "mask_s": t_mask - t_n4,
            "reg_s": t_reg - t_mask, "resample_s": t_end - t_reg, "tre_mean": float(d.mean()),
            "tre_p95": float(np.percentile(d, 95)), "peak_rss_mib": rss,
            "cpu_s": c_end - c0, "n4_cpu": c_n4 - c0, "mask_cpu": c_mask - c_n4,
            "reg_cpu": c_reg - c_mask, "load_end": f"{os.getloadavg()[0]:.2f}"}


def write_results(rows: list[dict[str, float | str]], threads: int, load: str) -> None:
    path = REPO / "benchmarks" / "results.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = [SECTION, "",
             f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, `python "
             f"benchmarks/register.py --threads {threads}`, load average at start {load} "
             "(2 cores shared with other jobs: times are upper bounds when contended). "
             "Pair: brain-t1-3d at 1 mm vs the same head moved 7/-4/3 deg, 10/-6/4 mm, "
             "with bias field and Rician noise. Wall = N4 (both) + template masks "
             "(baseline) + registration + resample. TRE over the brain mask. CPU = "
             "process CPU seconds over all threads (wall >= CPU / 2 on 2 idle cores; "
             "CPU does not grow with the load of other jobs).", "",
             "| method | wall s | CPU s | N4 s (CPU) | masks s (CPU) | reg s (CPU) | "
             "TRE mean mm | TRE p95 mm | peak RSS MiB | load at end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['n4_s']:.1f} "
                     f"({r['n4_cpu']:.1f}) | {r['mask_s']:.1f} ({r['mask_cpu']:.1f}) | "
                     f"{r['reg_s']:.1f} ({r['reg_cpu']:.1f}) | {r['tre_mean']:.3f} | "
                     f"{r['tre_p95']:.3f} | {r['peak_rss_mib']:.0f} | {r['load_end']} |")
    section = "\n".join(lines) + "\n"
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--methods", default="ours,ants_synquick_r,sitk_default")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "WORKDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_method(a.child[0], Path(a.child[1]), a.threads)))
        return
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_register_") as tmp:
        make_pair(Path(tmp))
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(a.threads))
        for m in a.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--threads", str(a.threads),
                                  "--child", m, tmp], capture_output=True, text=True, env=env,
                                 check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load average at start: {load}")
    print(f"{'method':<18}{'wall s':>8}{'CPU s':>7}{'N4 s':>7}{'(CPU)':>7}{'mask s':>8}"
          f"{'(CPU)':>7}{'reg s':>7}{'(CPU)':>7}{'TRE mean':>10}{'TRE p95':>9}{'RSS MiB':>9}"
          f"{'load':>6}")
    for r in rows:
        print(f"{r['method']:<18}{r['wall_s']:>8.1f}{r['cpu_s']:>7.1f}{r['n4_s']:>7.1f}"
              f"{r['n4_cpu']:>7.1f}{r['mask_s']:>8.1f}{r['mask_cpu']:>7.1f}{r['reg_s']:>7.1f}"
              f"{r['reg_cpu']:>7.1f}{r['tre_mean']:>10.3f}{r['tre_p95']:>9.3f}"
              f"{r['peak_rss_mib']:>9.0f}{r['load_end']:>6}")
    if not a.no_write:
        write_results(rows, a.threads, load)


if __name__ == "__main__":
    main()
