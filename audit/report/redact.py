"""Redaction: a report without personal data, for handing on.

Original audio, transcripts and speaker ids are personal data. :func:`redact_results` returns
a copy of a run's results with transcripts (inversion examples, judge hypotheses, the utility
probe's decoded examples) removed, speaker and utterance ids replaced by salted hashes, and
absolute paths cut to their last component; :func:`redact_examples` decides which example
files a redacted report may hold (no original audio) and under which hashed names. The salt
is a per-report secret that is never written anywhere, so a hash cannot be checked against a
list of known ids.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
from typing import Any

#: Keys whose values are speaker or utterance ids (a string or a list of strings).
ID_KEYS = ("speaker", "speakers", "utt_id", "utt_ids", "dropped_speakers", "same_recording_speakers")
#: Keys whose values are transcripts of someone's speech (references or ASR hypotheses): dropped.
TEXT_KEYS = ("transcript", "transcripts", "reference", "references", "hypothesis", "hypotheses",
             "hypotheses_reconstruction", "hypotheses_original")
#: Example files a redacted report leaves out: the original recording, and its vocoder copy (the same
#: words in nearly the same voice). Reconstructions stay: they are the finding.
ORIGINAL_KINDS = ("original", "vocoder_copy")
_ABSOLUTE = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:[\\/]|~/|/)(?:[^\s'\"/\\]+[\\/])*([^\s'\"/\\]*)")


def new_salt() -> str:
    """A fresh secret salt for one redacted report (kept in memory only)."""
    return secrets.token_hex(16)


def hash_id(value: str, salt: str) -> str:
    """``anon-`` plus 12 hex digits of SHA-256 over the salt and the id: stable within one report."""
    return "anon-" + hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()[:12]


def strip_paths(text: str) -> str:
    """``text`` with every absolute path (``/a/b/c``, ``~/x``, ``C:\\x``) cut to ``.../<last component>``."""
    return _ABSOLUTE.sub(lambda m: f".../{m.group(1)}" if m.group(1) else "...", text)


def _walk(node: Any, salt: str, key: str | None = None) -> Any:
    if isinstance(node, dict):
        return {k: _walk(v, salt, k) for k, v in node.items() if k not in TEXT_KEYS}
    if isinstance(node, list):
        if key in ID_KEYS:
            return [hash_id(str(v), salt) if v is not None else None for v in node]
        return [_walk(v, salt) for v in node]
    if isinstance(node, str):
        return hash_id(node, salt) if key in ID_KEYS else strip_paths(node)
    return node


def redact_results(results: dict, salt: str, example_names: dict[str, str | None]) -> dict:
    """A redacted deep copy of ``results`` (see the module docstring).

    ``example_names`` maps each example file of the full report to its name in the redacted one
    (None: left out), as :func:`redact_examples` returns; file lists are rewritten to match.
    """
    out = copy.deepcopy(results)
    for la in out.get("layers", []):
        frame = ((la.get("attacks") or {}).get("inversion") or {}).get("frame")
        if isinstance(frame, dict) and frame.get("examples"):
            for ex in frame["examples"]:
                ex["files"] = {k: example_names[f] for k, f in ex["files"].items() if example_names.get(f)}
            frame["files"] = [f for ex in frame["examples"] for f in ex["files"].values()]
    for entry in out.get("defenses") or []:
        extra = (entry.get("utility") or {}).get("extra")
        if isinstance(extra, dict):
            extra.pop("examples", None)
    redacted = _walk(out, salt)
    redacted["files"] = sorted({example_names.get(f, f) for f in results.get("files", [])} - {None})
    return redacted


def redact_examples(results: dict, salt: str) -> dict[str, str | None]:
    """Each inversion example file -> its redacted name (utterance id hashed), or None for original audio."""
    names: dict[str, str | None] = {}
    for la in results.get("layers", []):
        frame = ((la.get("attacks") or {}).get("inversion") or {}).get("frame")
        for ex in (frame or {}).get("examples") or [] if isinstance(frame, dict) else []:
            tag = hash_id(str(ex.get("utt_id")), salt)
            for kind, file in ex.get("files", {}).items():
                suffix = file.rsplit(".", 1)[-1]
                names[file] = None if kind in ORIGINAL_KINDS else \
                    f"examples/layer{ex.get('layer')}_{tag}_{kind}.{suffix}"
    return names


__all__ = ["ID_KEYS", "ORIGINAL_KINDS", "TEXT_KEYS", "hash_id", "new_salt", "redact_examples", "redact_results",
           "strip_paths"]
