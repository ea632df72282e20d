"""Make free text safe for file names and logs (defence in depth).

This is not a PHI detector: it cannot know that a word is a name. The
pipeline never puts header text into file names; this helper is for the rare
place where a label derived from text is unavoidable. It removes the values
the caller knows to be identifying, long digit runs (dates, record numbers),
anything non-ASCII, and everything that is not a letter or digit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_DIGIT_RUN = re.compile(r"\d{5,}")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _known_parts(known: Iterable[str]) -> list[str]:
    parts: set[str] = set()
    for value in known:
        text = str(value).strip()
        if not text:
            continue
        parts.add(text)
        # person names: family^given^middle^prefix^suffix, also space separated
        parts.update(p for p in re.split(r"[\^\s,]+", text) if len(p) >= 2)
    return sorted(parts, key=len, reverse=True)


def scrub_text(text: str, *, known: Iterable[str] = (), max_len: int = 32) -> str:
    """Alphanumeric ASCII text of at most ``max_len`` characters.

    ``known`` values (patient name, IDs, ...) and their name components are
    removed case-insensitively first; runs of 5+ digits are removed.

    >>> scrub_text("t1_mprage Doe^Jane 20220407", known=["Doe^Jane"])
    't1mprage'
    """
    out = str(text)
    for part in _known_parts(known):
        out = re.sub(re.escape(part), " ", out, flags=re.IGNORECASE)
    out = unicodedata.normalize("NFKD", out).encode("ascii", "ignore").decode("ascii")
    out = _DIGIT_RUN.sub(" ", out)
    out = _NOT_ALNUM.sub("", out)
    return out[:max_len]
