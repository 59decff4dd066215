"""File names built from data (utterance and speaker ids), safe to join under an output folder.

An id comes from someone else's manifest: it may hold ``/``, ``..``, NUL or anything else.
:func:`safe_filename` keeps letters, digits, ``-``, ``_`` and ``.`` (no leading dot), so the
result is one path component that cannot climb out of the folder; when that changed the id, a
short hash of the original is appended, so two ids that differ only in removed characters
(``a/b`` and ``a_b``) never share a file.
"""

from __future__ import annotations

import hashlib

#: Longest kept part of an id in a file name (before the hash suffix).
MAX_STEM = 64


def safe_filename(text: str) -> str:
    """``text`` as one safe file-name component, unique per distinct ``text`` whenever it had to be changed."""
    text = str(text)
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text).lstrip(".")
    cleaned = cleaned[:MAX_STEM]
    if cleaned == text and cleaned:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned or 'id'}-{digest}"


__all__ = ["MAX_STEM", "safe_filename"]
