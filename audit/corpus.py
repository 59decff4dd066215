"""Corpora: tables of utterances, their loaders, row filters and fixed-length segmenting.

A corpus is a list of :class:`Utterance` rows (``utt_id, path, speaker, transcript,
attributes``). Three loaders feed it: a CSV manifest folder (the format of
``../shared/data/*/manifest.csv``), a LibriSpeech folder (``librispeech:PATH``) and the
built-in synthetic corpus (``synthetic``). Splits live in :mod:`audit.splits`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from audit.audio import audio_duration
from audit.errors import AudioError, CorpusError

RESERVED_COLUMNS = ("path", "speaker", "transcript", "duration_s", "utt_id", "recording", "session")


@dataclass(frozen=True)
class Utterance:
    """One row of a corpus: an audio span with its speaker, transcript and attributes.

    ``start``/``end`` select a span of the file in seconds (``end=None``: to the end), so
    segmenting a long recording never copies audio. ``recording`` names the source recording
    (its file unless a manifest says otherwise) and ``session`` the recording session (a
    LibriSpeech chapter, a manifest ``session`` or ``chapter`` column, else the recording):
    splits group by them so that one recording never feeds both sides of a split.
    """

    utt_id: str
    path: str
    speaker: str
    transcript: str | None
    duration: float
    attributes: dict[str, str] = field(default_factory=dict)
    start: float = 0.0
    end: float | None = None
    recording: str = ""
    session: str = ""

    def __post_init__(self) -> None:
        if not self.recording:
            object.__setattr__(self, "recording", self.path)
        if not self.session:
            object.__setattr__(self, "session", self.recording)


@dataclass
class Corpus:
    """An ordered table of utterances plus the spec it was loaded from."""

    name: str
    utterances: list[Utterance]
    filters: tuple[str, ...] = ()
    segment_seconds: float | None = None

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self):
        return iter(self.utterances)

    @property
    def speakers(self) -> list[str]:
        """Speaker label of each utterance, in corpus order."""
        return [u.speaker for u in self.utterances]

    @property
    def total_seconds(self) -> float:
        """Total audio duration of the corpus in seconds."""
        return float(sum(u.duration for u in self.utterances))

    def describe(self) -> str:
        """One-line description: name, filters, segmenting, counts."""
        parts = [self.name]
        parts += [f"where {f}" for f in self.filters]
        if self.segment_seconds:
            parts.append(f"segment {self.segment_seconds:g}s")
        n_spk = len(set(self.speakers))
        return f"{', '.join(parts)} ({len(self)} utterances, {n_spk} speakers, {self.total_seconds / 60:.1f} min)"

    def fingerprint(self) -> str:
        """Hash of what determines the embeddings: ids, files (size, mtime) and spans."""
        h = hashlib.sha256()
        for u in self.utterances:
            try:
                st = os.stat(u.path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{u.utt_id}\t{u.path}\t{stamp}\t{u.start:.6f}\t{u.end}\n".encode())
        return h.hexdigest()

    def listing_fingerprint(self) -> str:
        """Hash of the utterance listing, not where or when its files are: ids, labels, spans, grouping, sizes.

        :meth:`fingerprint` keys the embedding store, so it includes each file's path and mtime
        and changes when a corpus is copied or rebuilt elsewhere; this one stays equal for copies
        of one corpus in different folders (as two runs of the synthetic default in two cache
        folders), and changes when a row, a label, a span or a file's size does.
        """
        h = hashlib.sha256()
        recordings: dict[str, int] = {}
        sessions: dict[str, int] = {}
        for u in self.utterances:
            try:
                size = str(os.stat(u.path).st_size)
            except OSError:
                size = "missing"
            # Recordings and sessions by order of first appearance: which rows share one (what splits
            # group by), not their names, which default to the file's path.
            grouping = (f"{recordings.setdefault(u.recording, len(recordings))}:"
                        f"{sessions.setdefault(u.session, len(sessions))}")
            h.update("\t".join([u.utt_id, u.speaker, u.transcript or "", f"{u.start:.6f}", str(u.end), size,
                                grouping, json.dumps(u.attributes, sort_keys=True)]).encode() + b"\n")
        return h.hexdigest()

    def attribute_values(self, name: str) -> list[str | None]:
        """Value of attribute ``name`` for every utterance (None where absent or empty)."""
        return [u.attributes.get(name) or None for u in self.utterances]

    def where(self, conditions: Sequence[str]) -> "Corpus":
        """Keep rows matching every ``COLUMN=VALUE`` condition (``speaker`` or any attribute)."""
        rows = self.utterances
        for cond in conditions:
            if "=" not in cond:
                raise CorpusError(f"--where {cond!r}: expected COLUMN=VALUE")
            key, value = (s.strip() for s in cond.split("=", 1))
            known = {"speaker", "utt_id"} | {k for u in rows for k in u.attributes}
            if key not in known:
                raise CorpusError(
                    f"--where {cond!r}: unknown column {key!r} in corpus {self.name}; "
                    f"columns: {', '.join(sorted(known))}"
                )
            rows = [u for u in rows if _column(u, key) == value]
            if not rows:
                raise CorpusError(f"--where {cond!r}: no utterance of corpus {self.name} matches")
        return Corpus(self.name, list(rows), self.filters + tuple(conditions), self.segment_seconds)

    def segmented(self, seconds: float) -> "Corpus":
        """Cut every utterance into consecutive ``seconds``-long segments.

        Each segment keeps its speaker, attributes, ``recording`` and ``session`` (so splits
        keep a recording's segments together); transcripts are dropped because no word timing
        is known. A tail shorter than half a segment is dropped; an utterance
        shorter than one segment stays whole. Segment ids are ``<utt_id>_segNNN``: unique, because
        utterance ids are and the text after the last ``_seg`` is all digits.
        """
        if not seconds or seconds <= 0:
            raise CorpusError(f"--segment {seconds!r}: must be a positive number of seconds")
        out: list[Utterance] = []
        for u in self.utterances:
            total = (u.end if u.end is not None else u.duration + u.start) - u.start
            n = max(1, int(math.floor(total / seconds)))
            if total - n * seconds >= seconds / 2:
                n += 1
            if n == 1:
                out.append(replace(u, utt_id=f"{u.utt_id}_seg000", transcript=None))
                continue
            for k in range(n):
                s = u.start + k * seconds
                e = min(u.start + (k + 1) * seconds, u.start + total)
                out.append(replace(u, utt_id=f"{u.utt_id}_seg{k:03d}", transcript=None,
                                   start=s, end=e, duration=e - s))
        return Corpus(self.name, out, self.filters, seconds)


def _column(u: Utterance, key: str) -> str | None:
    if key == "speaker":
        return u.speaker
    if key == "utt_id":
        return u.utt_id
    return u.attributes.get(key)


def load_manifest(location: str | Path) -> Corpus:
    """Load a CSV manifest (a folder holding ``manifest.csv``, or the CSV file itself).

    Required columns: ``path`` (relative to the manifest's folder or absolute) and
    ``speaker``; optional ``transcript``, ``duration_s``, ``utt_id``, ``recording`` (the
    source recording, default: the file) and ``session`` (default: a ``chapter`` column, else
    the recording); every other column becomes an attribute. Each of these is an error naming
    the row: a missing file, a relative path that resolves outside the manifest's folder, a
    ``duration_s`` that is not a finite number > 0, a duplicate ``utt_id``, NUL in a path or id,
    more fields than columns. The file must be UTF-8 (a byte-order mark is dropped). Unreadable
    audio is not an error here: :mod:`audit.audio_check` names every bad file at once.
    """
    location = Path(location)
    csv_path = location / "manifest.csv" if location.is_dir() else location
    if not csv_path.is_file():
        raise CorpusError(f"{location}: no manifest.csv found (expected a folder holding manifest.csv or a CSV file)")
    root = csv_path.parent
    utts: list[Utterance] = []
    seen: set[str] = set()
    reader = csv.DictReader(io.StringIO(_manifest_text(csv_path), newline=""))
    try:
        columns = reader.fieldnames or []
        for required in ("path", "speaker"):
            if required not in columns:
                raise CorpusError(f"{csv_path}: missing required column {required!r} (columns: {', '.join(columns)})")
        for row in reader:
            lineno = reader.line_num
            if None in row:
                raise CorpusError(f"{csv_path}:{lineno}: more fields than the header's {len(columns)} columns")
            rel = (row.get("path") or "").strip()
            speaker = (row.get("speaker") or "").strip()
            if not rel or not speaker:
                raise CorpusError(f"{csv_path}:{lineno}: empty 'path' or 'speaker'")
            path = _row_path(csv_path, lineno, root, rel)
            utt_id = (row.get("utt_id") or "").strip() or Path(rel).stem
            if "\0" in utt_id or "\0" in speaker:
                raise CorpusError(f"{csv_path}:{lineno}: NUL character in 'utt_id' or 'speaker'")
            if utt_id in seen:
                raise CorpusError(f"{csv_path}:{lineno}: duplicate utt_id {utt_id!r}")
            seen.add(utt_id)
            dur_text = (row.get("duration_s") or "").strip()
            duration = _row_duration(csv_path, lineno, dur_text) if dur_text else _header_duration(path)
            attrs = {k: (v or "").strip() for k, v in row.items() if k not in RESERVED_COLUMNS and k is not None}
            transcript = (row.get("transcript") or "").strip() or None
            recording = (row.get("recording") or "").strip() or str(path)
            session = (row.get("session") or "").strip() or attrs.get("chapter") or recording
            utts.append(Utterance(utt_id, str(path), speaker, transcript, duration, attrs,
                                  recording=recording, session=f"{speaker}/{session}"))
    except csv.Error as exc:
        raise CorpusError(f"{csv_path}:{reader.line_num}: malformed CSV ({exc})") from exc
    if not utts:
        raise CorpusError(f"{csv_path}: manifest has no rows")
    return Corpus(str(location), utts)


def _manifest_text(csv_path: Path) -> str:
    """The manifest as text: UTF-8, a leading byte-order mark (as spreadsheets write) dropped; else one line."""
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CorpusError(f"{csv_path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save the manifest as UTF-8") from exc


def _row_path(csv_path: Path, lineno: int, root: Path, rel: str) -> Path:
    """A row's audio file: absolute as given, or relative to (and inside) the manifest's folder."""
    if "\0" in rel:
        raise CorpusError(f"{csv_path}:{lineno}: NUL character in 'path'")
    if os.path.isabs(rel):
        path = Path(rel)
    else:
        path = (root / rel).resolve()
        if not path.is_relative_to(root.resolve()):
            raise CorpusError(f"{csv_path}:{lineno}: relative path {rel!r} resolves outside the manifest's folder "
                              f"({path}); give an absolute path to use audio stored elsewhere")
    if not path.is_file():
        raise CorpusError(f"{csv_path}:{lineno}: audio file not found: {path}")
    return path


def _header_duration(path: Path) -> float:
    """A file's duration from its header; 0.0 when the header is unreadable or empty, so that loading
    goes on and the audio check (:mod:`audit.audio_check`) names every bad file at once."""
    try:
        return audio_duration(path)
    except AudioError:
        return 0.0


def _row_duration(csv_path: Path, lineno: int, text: str) -> float:
    """A row's ``duration_s``: a finite number of seconds > 0."""
    try:
        duration = float(text)
    except ValueError as exc:
        raise CorpusError(f"{csv_path}:{lineno}: bad duration_s {text!r} (expected seconds)") from exc
    if not math.isfinite(duration) or duration <= 0:
        raise CorpusError(f"{csv_path}:{lineno}: bad duration_s {text!r} (must be a finite number of seconds > 0)")
    return duration


def _speakers_txt(root: Path) -> dict[str, dict[str, str]]:
    for candidate in (root / "SPEAKERS.TXT", root.parent / "SPEAKERS.TXT"):
        if candidate.is_file():
            info: dict[str, dict[str, str]] = {}
            for line in candidate.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith(";") or "|" not in line:
                    continue
                parts = [p.strip() for p in line.split("|")]
                if len(parts) >= 3:
                    info[parts[0]] = {"gender": parts[1], "subset": parts[2]}
            return info
    return {}


def load_librispeech(root: str | Path) -> Corpus:
    """Load a LibriSpeech folder: ``<spk>/<chapter>/*.flac`` plus ``*.trans.txt``.

    Gender and subset come from ``SPEAKERS.TXT`` (in the folder or its parent) when present.
    A FLAC without a transcript line is an error naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(
            f"librispeech:{root}: folder not found. Download LibriSpeech from https://www.openslr.org/12 "
            "and pass the split folder, e.g. librispeech:/data/LibriSpeech/dev-clean"
        )
    speakers = _speakers_txt(root)
    utts: list[Utterance] = []
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        lines = {}
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                key, _, text = line.partition(" ")
                lines[key] = text.strip()
        for flac in sorted(trans.parent.glob("*.flac")):
            if flac.stem not in lines:
                raise CorpusError(f"{flac}: no transcript line for {flac.stem} in {trans}")
            spk, chapter = flac.parent.parent.name, flac.parent.name
            attrs = {"chapter": chapter, **speakers.get(spk, {})}
            utts.append(Utterance(flac.stem, str(flac.resolve()), spk, lines[flac.stem],
                                  audio_duration(flac), attrs, session=f"{spk}/{chapter}"))
    if not utts:
        raise CorpusError(f"librispeech:{root}: no <speaker>/<chapter>/*.trans.txt found")
    return Corpus(f"librispeech:{root}", utts)


def load_corpus(spec: str, *, seed: int = 0, progress: bool = True) -> Corpus:
    """Resolve a corpus spec: ``synthetic``, ``librispeech:PATH``, ``manifest:PATH`` or a path."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from audit.synth import ensure_default_corpus

        folder = ensure_default_corpus(seed=seed, progress=progress)
        corpus = load_manifest(folder)
        corpus.name = "synthetic"
        return corpus
    if spec.startswith("librispeech:"):
        return load_librispeech(spec.split(":", 1)[1])
    if spec.startswith("manifest:"):
        return load_manifest(spec.split(":", 1)[1])
    if Path(spec).exists():
        return load_manifest(spec)
    raise CorpusError(
        f"corpus {spec!r}: not found. Use 'synthetic', 'librispeech:PATH', or a folder holding manifest.csv"
    )


_ALNUM = re.compile(r"[A-Za-z0-9]")


def speech_rate(u: Utterance, voiced_seconds: float | None = None) -> float | None:
    """Characters per second: alphanumeric characters of the transcript / speaking time.

    Speaking time is ``voiced_seconds`` (voice activity detection, silence and padding left
    out) when given, else the utterance's duration. None without a transcript or speech.
    """
    seconds = u.duration if voiced_seconds is None else voiced_seconds
    if not u.transcript or not seconds or seconds <= 0:
        return None
    return len(_ALNUM.findall(u.transcript)) / seconds

