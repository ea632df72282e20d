#!/usr/bin/env bash
# Install mri-safety with its test dependencies, then run lint, types and tests.
# This is the README's test command and what CI runs (.ci/run).
#   bash scripts/test.sh            # whole default suite (includes @slow real-data tests)
#   bash scripts/test.sh -m "not slow"   # quick local run; extra args go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"

# headless Chromium (Debian package) for the report browser test; idempotent,
# needs root (tests/test_report.py skips with the reason otherwise)
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = "0" ]; then
        (apt-get update -qq && apt-get install -y -qq chromium) \
            || echo "warning: could not install chromium; the browser test will skip"
    else
        echo "note: not root, chromium not installed; the browser test will skip"
    fi
fi

echo "== ruff"
python3 -m ruff check mri_safety pipelines
echo "== mypy"
python3 -m mypy
echo "== pytest"
python3 -m pytest -n 2 --dist loadfile "$@"
