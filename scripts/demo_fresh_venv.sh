#!/usr/bin/env bash
# The README's first command from a clean clone in a fresh virtual environment:
#
#   bash scripts/demo_fresh_venv.sh [WORKDIR]
#
# 1. git clone of this checkout's HEAD (committed work only) into WORKDIR
#    (default: a new temporary folder, removed at the end unless KEEP=1),
# 2. python3 -m venv (no system site-packages: dependencies come from PyPI),
#    MRI_SAFETY_DATA pointing at the data folder (the demo's synthetic anatomy),
# 3. in the clone, exactly the README's command:
#       python3 -m pip install -e . && mri-safety demo
# 4. checks the demo's outputs: BIDS NIfTI + sidecars, one visit summary per
#    visit, a run summary without failures, stage manifests, evidence pictures.
#
# Prints the time of each step. Exit 0 when everything is there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-}
if [ -z "$work" ]; then
  work=$(mktemp -d -t mri-safety-fresh-XXXXXX)
  [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
# The synthetic anatomy comes from the data folder (README: ../shared/data
# beside the checkout, or MRI_SAFETY_DATA); the clone is elsewhere, so point
# it at the data folder beside THIS checkout unless already set.
export MRI_SAFETY_DATA=${MRI_SAFETY_DATA:-$(realpath -m "$repo/../shared/data")}
[ -d "$MRI_SAFETY_DATA" ] || { echo "data folder $MRI_SAFETY_DATA not found" >&2; exit 1; }
t0=$(date +%s)
git clone --quiet "$repo" "$work/mri-safety"
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
cd "$work/mri-safety"
echo "== clone + venv: $(( $(date +%s) - t0 )) s (HEAD $(git rev-parse --short HEAD))"

t1=$(date +%s)
# the README's first command, verbatim
python3 -m pip install -e . && mri-safety demo
t2=$(date +%s)
echo "== README command (install + demo): $(( t2 - t1 )) s"

demo="$work/mri-safety/mri-safety-demo"
python3 - "$demo" <<'PY'
import json, sys
from pathlib import Path

demo = Path(sys.argv[1])
res = demo / "results"
nifti = sorted((res / "bids").rglob("*.nii.gz"))
assert nifti, "no BIDS NIfTI written"
for n in nifti:
    assert n.with_name(n.name.replace(".nii.gz", ".json")).is_file(), f"{n}: no sidecar"
run = json.loads((res / "run_summary.json").read_text())
assert not run["failures"], run["failures"]
visits = sorted((res / "visits").glob("sub-*/ses-*/visit_summary.json"))
assert len(visits) == len(run["visits"]) >= 3, (visits, run["visits"])
n_cmp = 0
for v in visits:
    doc = json.loads(v.read_text())
    for c in doc["comparisons"]:
        n_cmp += 1
        assert (res / c["manifest"]).is_file() and (res / c["register_manifest"]).is_file()
        assert (res / c["evidence"] / "regcheck.png").is_file()
assert n_cmp > 0, "no comparisons"
assert (res / "logs" / "run.log").is_file()
assert (demo / "trial" / "ground_truth").is_dir()
assert (res / "reports" / "index.html").is_file() and (res / "reports" / "safety_table.csv").is_file()
subjects = {v.parent.parent.name for v in visits}
assert len(subjects) == 2, subjects
truth = [json.loads(t.read_text()) for t in (demo / "trial" / "ground_truth").glob("*/truth.json")]
new = [bool(v["new_abnormality_ids"]) for t in truth for v in t["visits"][1:]]
assert any(new) and not all(new), new  # a visit with new abnormalities and one without
print(f"demo outputs OK: {len(nifti)} NIfTI, {len(visits)} visits, {n_cmp} comparisons, "
      f"computed {run['computed']}")
PY
echo "== total: $(( $(date +%s) - t0 )) s"
