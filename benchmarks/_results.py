"""Write one section of ``benchmarks/results.md``, keeping the others.

Sections are delimited by ``## <title>`` headings; re-running a benchmark
replaces only its own section and stamps it with the date and host facts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mri_safety.change.params import DetectParams

RESULTS = Path(__file__).resolve().parent / "results.md"
_HEADER = (
    "# Measured figures\n\n"
    "Written by the scripts in `benchmarks/`; each section is replaced when its "
    "script is re-run. Bars come from the issues; ratios compare with the anchor "
    "measured in the same run.\n"
)


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``## title`` with ``body``."""
    text = path.read_text() if path.exists() else _HEADER
    stamp = f"_Measured {_dt.date.today().isoformat()} on {os.cpu_count()} cores._"
    block = f"## {title}\n\n{stamp}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def add_param_overrides(ap: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): detection parameters other than
    ``configs/detection.yaml`` for a comparison run (e.g. ``--set
    local_reference_mm=0`` for the global lesion-likeness rule). Such a run
    prints its tables and does not write results.md."""
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="detection parameter override (no write)")


def params_from(overrides: list[str]) -> DetectParams | None:
    """The detection parameters of ``--set`` values (YAML-typed), None without any."""
    import yaml

    from mri_safety.change.params import load_params

    if not overrides:
        return None
    kv: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        kv[key.strip()] = yaml.safe_load(value)
    print(f"detection parameter overrides: {kv} (results.md not written)", flush=True)
    return load_params(**kv)
