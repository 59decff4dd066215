"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A crash leaves the previous file or none, never half a file (rename is atomic on one filesystem).
A failed write (e.g. a full disk) removes the temporary file and re-raises the ``OSError``;
:func:`write_error` turns it into the one-line message callers raise as their own error.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from audit.errors import OutputError


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk, and rename it to ``path``.

    Whatever ``write`` raises propagates after the temporary file is removed; a failure to remove
    it never hides the original error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_error(path: str | Path, exc: OSError) -> str:
    """One line for an ``OSError`` raised while writing ``path``, naming ``path`` (the target, not a temporary file).

    ``<path>: cannot write: disk full (ENOSPC)``, ``<path>: cannot write: disk quota exceeded (EDQUOT)``,
    else ``<path>: cannot write: <strerror>`` (e.g. ``Permission denied``).
    """
    if exc.errno == errno.ENOSPC:
        reason = "disk full (ENOSPC)"
    elif exc.errno == getattr(errno, "EDQUOT", None):
        reason = "disk quota exceeded (EDQUOT)"
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{path}: cannot write: {' '.join(reason.split())}"


def output_dir(path: Path) -> Path:
    """Create the output folder ``path`` (and its parents); an ``OSError`` becomes one :class:`OutputError` line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(write_error(path, exc)) from exc
    return path


def write_output(path: Path, write: Callable[[Path], None]) -> None:
    """:func:`atomic_save` for a run's outputs: an ``OSError`` becomes one :class:`OutputError` line naming ``path``."""
    try:
        atomic_save(path, write)
    except OSError as exc:
        raise OutputError(write_error(path, exc)) from exc


def write_output_text(path: Path, text: str) -> None:
    """:func:`write_output` of UTF-8 text."""
    write_output(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


__all__ = ["atomic_save", "atomic_write_text", "output_dir", "write_error", "write_output", "write_output_text"]
