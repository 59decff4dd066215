"""The user's cache folder, and content hashes of large files remembered in it.

``$SPEECH_AUDIT_CACHE`` if set, else ``~/.cache/speech-audit``: the embedding store
(``store/``), built-in corpora (``synthetic/``) and ``hashes.json`` live there. Hashing model
weights costs a full read of the files on every run; :func:`remembered_hash` keeps each hash
keyed by the files' resolved paths, sizes and modification times, so unchanged files are read once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from audit.atomic import atomic_write_text

HASHES_FILE = "hashes.json"


def cache_root() -> Path:
    """``$SPEECH_AUDIT_CACHE`` (``~`` expanded) if set, else ``~/.cache/speech-audit``."""
    root = os.environ.get("SPEECH_AUDIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "speech-audit"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}\t{st.st_size}\t{st.st_mtime_ns}"


def remembered_hash(paths: Sequence[str | Path], compute: Callable[[], str]) -> str:
    """``compute()``, a hash of the files ``paths``, remembered per (path, size, mtime) of each file.

    The first call reads the files; later calls with the same unchanged files return the kept
    value from ``hashes.json`` in the cache. A read-only or corrupt cache only costs the re-hash.
    """
    stamp = "\n".join(_stamp(Path(p)) for p in paths)
    index_path = cache_root() / HASHES_FILE
    try:
        known = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(stamp), str):
        return known[stamp]
    known[stamp] = compute()
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(index_path, json.dumps(known, indent=0, sort_keys=True))
    except OSError:
        pass
    return known[stamp]


__all__ = ["HASHES_FILE", "cache_root", "remembered_hash"]
