"""The site secret and everything keyed by it: pseudonyms, UID remapping and
UID hashes for provenance.

All three are HMAC-SHA256 with the site secret (RFC 2104, Python's ``hmac``),
each with its own domain-separation prefix so that a value from one can never
be confused with another. Without the secret nobody can recompute a
pseudonym from a patient ID or confirm a guessed source UID; with it the site
can always re-derive them (nothing else needs to be stored).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment variable that may hold the secret (any string of >= 16 bytes).
SECRET_ENV = "MRI_SAFETY_SECRET"
MIN_SECRET_BYTES = 16

_PSEUDONYM_DOMAIN = b"mri-safety/pseudonym/v1\x00"
_UID_DOMAIN = b"mri-safety/uid/v1\x00"
_UID_HASH_DOMAIN = b"mri-safety/uid-hash/v1\x00"

#: First character of every pseudonym (so it never starts with a digit).
PSEUDONYM_PREFIX = "P"
PSEUDONYM_HASH_CHARS = 10  # base32 characters = 50 bits


def default_secret_path() -> Path:
    """``$XDG_CONFIG_HOME/mri-safety/site-secret`` (default ``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mri-safety" / "site-secret"


def _check(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{where}: site secret is too short ({len(secret)} bytes, need >= {MIN_SECRET_BYTES})"
        )
    return secret


def _read_secret_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read site secret: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: site secret is readable by group/others; chmod 600 it", path)
    return _check(data, str(path))


def create_secret(path: Path) -> bytes:
    """Create a new random 256-bit secret at ``path`` (mode 0600) and return it.

    Refuses to overwrite an existing file (losing the secret would change
    every pseudonym and UID).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_hex(32).encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret + b"\n")
    log.warning(
        "created a new site secret at %s: keep it private and back it up; pseudonyms "
        "and UIDs depend on it",
        path,
    )
    return secret


def load_secret(path: Path | None = None) -> bytes:
    """The site secret, from (in order) ``path``, ``$MRI_SAFETY_SECRET``, or the
    default file (:func:`default_secret_path`), which is created once with a
    random value when missing.

    The secret is the file's bytes with surrounding whitespace stripped. It
    is never written into any output. Raises ``ValueError`` naming the source
    when it is unreadable or shorter than 16 bytes; an explicit ``path`` that
    does not exist is an error (a typo must not silently make new pseudonyms).
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise ValueError(
                f"{path}: site secret file not found (create one with "
                "mri_safety.dicom.deid.create_secret or omit the path to use the default)"
            )
        return _read_secret_file(path)
    env = os.environ.get(SECRET_ENV)
    if env:
        return _check(env.strip().encode("utf-8"), f"${SECRET_ENV}")
    default = default_secret_path()
    if default.exists():
        return _read_secret_file(default)
    try:
        return create_secret(default)
    except FileExistsError:  # created concurrently by another worker
        return _read_secret_file(default)


def _mac(secret: bytes, domain: bytes, text: str) -> bytes:
    return hmac.new(secret, domain + text.encode("utf-8"), hashlib.sha256).digest()


def pseudonym_for(secret: bytes, patient_id: str) -> str:
    """``"P"`` + 10 uppercase base32 characters of HMAC(secret, patient ID).

    Alphanumeric (a valid BIDS label), never starting with a digit. Leading and
    trailing spaces/NULs of the ID (DICOM padding) are ignored.
    """
    pid = patient_id.strip(" \x00")
    if not pid:
        raise ValueError("empty PatientID: cannot derive a pseudonym")
    digest = _mac(secret, _PSEUDONYM_DOMAIN, pid)
    return PSEUDONYM_PREFIX + base64.b32encode(digest).decode("ascii")[:PSEUDONYM_HASH_CHARS]


def remap_uid(secret: bytes, source_uid: str) -> str:
    """Deterministic ``2.25.<decimal>`` UID (<= 44 characters) for ``source_uid``.

    The integer is 128 bits of HMAC(secret, UID) with the RFC 9562 version-8
    (custom) and variant bits set, so it is a valid UUID as the 2.25 arc
    requires.
    """
    uid = source_uid.strip(" \x00")
    if not uid:
        raise ValueError("empty UID cannot be remapped")
    n = int.from_bytes(_mac(secret, _UID_DOMAIN, uid)[:16], "big")
    n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8
    n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122/9562 variant
    return f"2.25.{n}"


def hash_uid_for(secret: bytes, uid: str) -> str:
    """32 hex characters of HMAC(secret, UID): a provenance key for sidecars
    that lets the site find the source series again, and nobody else."""
    return _mac(secret, _UID_HASH_DOMAIN, uid.strip(" \x00")).hex()[:32]
