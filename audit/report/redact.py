"""Redaction: a report without personal data, for handing on.

Original audio, transcripts and speaker ids are personal data, marked where they are produced
(:mod:`audit.personal`): each attack family's registry entry declares the fields of its per-layer
result that hold them (``AttackFamily.personal``), and the run's own fields are declared once
here (:data:`RUN_PERSONAL`). :func:`redact_results` applies every declaration and nothing else:
ids become salted hashes, transcripts are removed, files of recorded voices (originals, vocoder
copies) are left out; absolute paths anywhere are cut to their last component. Two further
steps follow from the declared values, not from key names: a string that equals a declared id
is hashed wherever it appears, and a file the report keeps (a reconstruction, a mel plot) has
each declared id in its name replaced by the id's hash. :func:`redact_examples` decides which
files a redacted report holds and under which names. A family the registry does not know
cannot say what is personal in its results, so its results are left out (with a warning).

The salt is a per-report secret that is never written anywhere, so a hash cannot be checked
against a list of known ids.
"""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from audit.family import AttackFamily
from audit.names import safe_filename
from audit.personal import PersonalField

#: Personal fields of the run's own results, outside any family: speakers a split left out or split
#: inside one recording, utterances skipped for bad audio, the utility probe's decoded examples.
RUN_PERSONAL = (
    PersonalField("splits.*.dropped_speakers", "speaker_id"),
    PersonalField("splits.*.same_recording_speakers", "speaker_id"),
    PersonalField("defense_plan.splits.*.dropped_speakers", "speaker_id"),
    PersonalField("defense_plan.splits.*.same_recording_speakers", "speaker_id"),
    PersonalField("defense_plan.utility_split.dropped_speakers", "speaker_id"),
    PersonalField("defense_plan.utility_split.same_recording_speakers", "speaker_id"),
    PersonalField("skipped_audio.*.utt_id", "utterance_id"),
    PersonalField("defenses.*.utility.extra.examples", "transcript"),
)
#: Where a run's results hold per-layer family results: mappings from family name to its result (a
#: defense scenario that could not run holds a ``not_applicable`` string there instead).
FAMILY_RESULTS = ("layers.*.attacks", "defenses.*.scenarios.*")
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


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    """(key, value) of a dict's entries or a list's items (keyed by index), nothing for a leaf."""
    if isinstance(node, dict):
        yield from node.items()
    elif isinstance(node, list):
        yield from enumerate(node)


def _at(node: Any, pattern: str) -> list[tuple[Any, Any]]:
    """(container, key) of every value at the dotted ``pattern`` below ``node`` (``*``: any one key or index).

    The same matching as :meth:`audit.personal.PersonalField.matches`, found by descending.
    """
    level: list[tuple[Any, Any]] = [({"": node}, "")]
    for part in pattern.split("."):
        level = [(parent[key], k) for parent, key in level for k, _ in _children(parent[key])
                 if part in ("*", str(k))]
    return level


def _family_results(results: dict) -> Iterator[tuple[dict, str]]:
    """(mapping, family name) of every per-layer family result in ``results``."""
    for pattern in FAMILY_RESULTS:
        for parent, key in _at(results, pattern):
            mapping = parent[key]
            if isinstance(mapping, dict):
                yield from ((mapping, name) for name, value in mapping.items() if isinstance(value, dict))


def _declared(results: dict, families: Mapping[str, AttackFamily]) -> list[tuple[PersonalField, Any, Any]]:
    """(field, container, key) of every declared personal value: the run's own, and each known family's."""
    found = [(f, parent, key) for f in RUN_PERSONAL for parent, key in _at(results, f.pattern)]
    for mapping, name in _family_results(results):
        if name in families:
            found += [(f, parent, key) for f in families[name].personal
                      for parent, key in _at(mapping[name], f.pattern)]
    return found


def _values(value: Any) -> list[str]:
    """The ids or file names a declared value holds: itself, a list's items, a mapping's keys (None left out)."""
    items = list(value) if isinstance(value, (list, dict)) else [value]
    return [str(v) for v in items if v is not None and v != "" and not isinstance(v, (bool, dict, list))]


def _strings(node: Any) -> Iterator[str]:
    """Every string value below ``node``."""
    if isinstance(node, str):
        yield node
    for _, value in _children(node):
        yield from _strings(value)


def _unknown(results: dict, families: Mapping[str, AttackFamily]) -> list[tuple[dict, str]]:
    """(mapping, name) of every family result whose family the registry does not know."""
    return [(m, name) for m, name in _family_results(results) if name not in families]


def _personal(results: dict, families: Mapping[str, AttackFamily]) -> tuple[set[str], set[str]]:
    """The declared ids, and the files a redacted report leaves out (recorded voices, unknown families' files)."""
    ids: set[str] = set()
    left_out: set[str] = set()
    for f, parent, key in _declared(results, families):
        if f.action == "hash":
            ids.update(_values(parent[key]))
        elif f.action == "leave_out":
            left_out.update(_values(parent[key]))
    listed = set(results.get("files", []))
    for mapping, name in _unknown(results, families):
        left_out.update(s for s in _strings(mapping[name]) if s in listed)
    return ids, left_out


def _hashed(value: Any, salt: str) -> Any:
    """A declared id value with each id hashed (a list's items, a mapping's keys; None kept)."""
    if isinstance(value, list):
        return [None if v is None else hash_id(str(v), salt) for v in value]
    if isinstance(value, dict):
        return {hash_id(str(k), salt): v for k, v in value.items()}
    return value if value is None or isinstance(value, bool) else hash_id(str(value), salt)


def _renamer(ids: set[str], salt: str):
    """A function giving a kept file's name with every declared id in its last component replaced by its hash.

    Files are named with :func:`audit.names.safe_filename` of the id; an id counts where it
    stands apart (no letter or digit next to it), the longest first, and only in the name's
    stem (its extension stays).
    """
    safe = {safe_filename(i): hash_id(i, salt) for i in ids}
    if not safe:
        return lambda file: file
    found = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, sorted(safe, key=len, reverse=True)))
                       + r")(?![A-Za-z0-9])")

    def rename(file: str) -> str:
        folder, sep, name = file.rpartition("/")
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        return f"{folder}{sep}{found.sub(lambda m: safe[m.group(0)], stem)}{dot}{ext}"

    return rename


def _walk(node: Any, ids: dict[str, str], names: Mapping[str, str | None]) -> Any:
    """``node`` with files renamed or dropped (``names``), declared ids hashed (``ids``) and paths cut."""
    def kept(value: Any) -> bool:
        return not (isinstance(value, str) and value in names and names[value] is None)

    if isinstance(node, dict):
        return {k: _walk(v, ids, names) for k, v in node.items() if kept(v)}
    if isinstance(node, list):
        return [_walk(v, ids, names) for v in node if kept(v)]
    if isinstance(node, str):
        if node in names:
            return names[node]
        return ids[node] if node in ids else strip_paths(node)
    return node


def redact_results(results: dict, salt: str, example_names: dict[str, str | None],
                   families: Mapping[str, AttackFamily]) -> dict:
    """A redacted deep copy of ``results`` (see the module docstring).

    ``example_names`` maps files of the full report to their names in the redacted one (None:
    left out), as :func:`redact_examples` returns; every mention of a file is rewritten to match.
    ``families`` is the registry whose entries declare what is personal in each family's results.
    """
    ids, _ = _personal(results, families)
    out = copy.deepcopy(results)
    unknown = _unknown(out, families)
    for mapping, name in unknown:
        mapping[name] = {"skipped": f"left out of the redacted report: family {name!r} is not in the registry, so "
                                    "which of its fields hold personal data is unknown"}
    if unknown:
        warnings.warn(f"redaction left out the results of unregistered families {sorted({n for _, n in unknown})}: "
                      "their personal fields are not declared", stacklevel=2)
    removed: list[tuple[Any, Any]] = []
    for f, parent, key in _declared(out, families):
        if f.action == "hash":
            parent[key] = _hashed(parent[key], salt)
        else:
            removed.append((parent, key))
    unique = {(id(parent), key): (parent, key) for parent, key in removed}.values()
    for parent, key in sorted(unique, key=lambda r: r[1] if isinstance(r[1], int) else -1, reverse=True):
        del parent[key]  # a list's items from the last, so the indices found stay right
    redacted = _walk(out, {i: hash_id(i, salt) for i in ids}, example_names)
    redacted["files"] = sorted({example_names.get(f, f) for f in results.get("files", [])} - {None})
    return redacted


def redact_examples(results: dict, salt: str, families: Mapping[str, AttackFamily]) -> dict[str, str | None]:
    """Each file of the run a redacted report renames or leaves out -> its redacted name, or None (left out).

    Left out: files declared ``audio_file`` (original recordings, vocoder copies) and files of
    families the registry does not know. Renamed: other listed files whose names hold a declared
    id (an inversion example's reconstruction ``examples/layer3_<utt>_reconstruction.wav``
    becomes ``examples/layer3_anon-<hash>_reconstruction.wav``). Files not named keep their name.
    """
    ids, left_out = _personal(results, families)
    names: dict[str, str | None] = dict.fromkeys(left_out)
    rename = _renamer(ids, salt)
    for file in results.get("files", []):
        if file not in names and rename(file) != file:
            names[file] = rename(file)
    return names


__all__ = ["FAMILY_RESULTS", "RUN_PERSONAL", "hash_id", "new_salt", "redact_examples", "redact_results",
           "strip_paths"]
