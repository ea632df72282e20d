"""Write one section of ``benchmarks/results.md``, keeping the others.

Sections are delimited by ``## <title>`` headings; re-running a benchmark
replaces only its own section and stamps it with the date and host facts.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

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
