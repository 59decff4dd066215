"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A crash leaves the previous file or none, never half a file (rename is atomic on one filesystem).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk, and rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["atomic_save", "atomic_write_text"]
