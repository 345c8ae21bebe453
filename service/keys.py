"""API keys: parsing, the rules a secret must pass, and the key ring that checks a presented key.

The ring keeps only each key's sha256, never the key: nothing it holds can leak a key into a log, an
error or a repr. A presented key is hashed and compared with every configured digest in constant time
(no early exit), so the time taken says neither whether nor which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
# what templates and tutorials put in a token field: a deploy that kept one must not open the API
PLACEHOLDER_TOKENS = frozenset({"changethis", "changeme", "change-me", "secret", "token", "admin", "password",
                                "your-token-here", "xxxxxxxxxxxxxxxx"})
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_secret(value: str) -> None:
    """Raise ValueError (a message that never repeats the value) unless ``value`` is a usable secret:
    not a placeholder, at least 16 characters, no surrounding whitespace. The admin token and every API
    key pass the same rules."""
    if value.strip().lower() in PLACEHOLDER_TOKENS or len(set(value)) < 4:
        raise ValueError("is a placeholder: generate one, e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))'")
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"must have at least {MIN_TOKEN_CHARS} characters")
    if value != value.strip():
        raise ValueError("has leading or trailing whitespace")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its id (what logs and rate limits name) and its sha256 (what is compared)."""

    id: str
    digest: bytes

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r})"


def parse_entry(entry: str, where: str) -> ApiKey:
    """``key`` or ``id:key`` -> an ApiKey; the id defaults to the first 12 hex digits of the key's sha256."""
    key_id, sep, key = entry.partition(":")
    if not sep:
        key_id, key = "", entry
    elif not KEY_ID.fullmatch(key_id):
        raise ValueError(f"{where}: the id before ':' must be 1-64 characters of A-Z a-z 0-9 . _ -")
    try:
        check_secret(key)
    except ValueError as exc:
        raise ValueError(f"{where}: the key {exc}") from None
    digest = _digest(key)
    return ApiKey(key_id or digest.hex()[:12], digest)


def parse_keys(text: str) -> list[ApiKey]:
    """LLM2CLIP_API_KEYS: a JSON list of entries or a comma-separated string of them."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            entries = json.loads(stripped)
        except ValueError:
            raise ValueError("starts with '[' but is not a JSON list of strings") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError("starts with '[' but is not a JSON list of strings")
    else:
        entries = stripped.split(",")
    entries = [e.strip() for e in entries if e.strip()]
    return _unique([parse_entry(e, f"entry {n}") for n, e in enumerate(entries, start=1)])


def read_keys_file(path: Path) -> list[ApiKey]:
    """One ``id:key`` or ``key`` per line; blank lines and ``#`` comments are skipped."""
    keys = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(parse_entry(line, f"{path.name} line {n}"))
    return _unique(keys)


def _unique(keys: list[ApiKey]) -> list[ApiKey]:
    """Two ids for one key would make its requests count against either: refused. One id for several keys
    is what a rotation is (old and new key of one client)."""
    seen: dict[bytes, str] = {}
    for k in keys:
        if k.digest in seen and seen[k.digest] != k.id:
            raise ValueError(f"one key is listed under two ids ({seen[k.digest]}, {k.id})")
        seen[k.digest] = k.id
    return keys


class KeyRing:
    """The keys of LLM2CLIP_API_KEYS plus those of LLM2CLIP_API_KEYS_FILE, the file re-read whenever its
    mtime, size or inode changes (keys rotate without a restart). A file that became unreadable or invalid
    leaves the keys it last gave in force and says why in the log, once per change."""

    def __init__(self, fixed: list[ApiKey], path: Path | None = None) -> None:
        self.fixed = fixed
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: list[ApiKey] = []
        if path is not None:
            self._refresh()

    @property
    def enabled(self) -> bool:
        return bool(self.fixed) or self.path is not None

    def keys(self) -> list[ApiKey]:
        if self.path is not None:
            self._refresh()
        return self.fixed + self._from_file

    def _refresh(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            stamp = (-1, -1, exc.errno or 0)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            keys = read_keys_file(self.path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("API keys file %s refused (%s): the %d keys it gave before stay in force",
                      self.path, reason, len(self._from_file))
            return
        log.info("API keys file %s read: %d keys (ids %s)", self.path, len(keys),
                 ", ".join(sorted({k.id for k in keys})) or "none")
        self._from_file = keys

    def match(self, presented: str) -> str | None:
        """The id of the key ``presented`` is, or None; compares against every key, never stopping early."""
        given = _digest(presented)
        found: str | None = None
        for key in self.keys():
            if hmac.compare_digest(given, key.digest) and found is None:
                found = key.id
        return found
