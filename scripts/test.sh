#!/usr/bin/env bash
# Install mri-safety with its test dependencies, then run lint, types and tests.
# This is the README's test command and what CI runs (.ci/run).
#   bash scripts/test.sh            # whole default suite (includes @slow real-data tests)
#   bash scripts/test.sh -m "not slow"   # quick local run; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"

echo "== ruff"
python3 -m ruff check mri_safety pipelines
echo "== mypy"
python3 -m mypy
echo "== pytest"
python3 -m pytest -n 2 --dist loadfile "$@"
