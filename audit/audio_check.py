"""Every utterance's audio checked before any model work, with every bad file named at once.

A corpus with three broken files should cost one run to fix, not three: :func:`find_bad_audio`
decodes each utterance's span (:func:`audit.audio.load_audio`, the same checks extraction
applies: unreadable, empty, too short, silent, NaN/inf, too long) and collects every failure.
:func:`check_corpus_audio` stops with all of them in one :class:`~audit.errors.AudioError`, or,
with ``skip_bad``, returns the corpus without them and the list of what was dropped (recorded in
the results; dropping more than :data:`WEAKENING_FRACTION` of the corpus weakens the audit).

A corpus that passed once is not decoded again: the check is remembered under the corpus
fingerprint (ids, paths, sizes, mtimes, spans) in ``$SPEECH_AUDIT_CACHE/audio-checks/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from audit.atomic import atomic_write_text
from audit.audio import load_audio
from audit.cache import cache_root
from audit.corpus import Corpus
from audit.errors import AudioError

#: Share of the corpus whose dropping (``--skip-bad-audio``) counts as weakening the audit.
WEAKENING_FRACTION = 0.01


@dataclass(frozen=True)
class BadAudio:
    """One utterance whose audio failed the checks, and why."""

    utt_id: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"utt_id": self.utt_id, "path": self.path, "reason": self.reason}


def find_bad_audio(corpus: Corpus, *, progress: bool = False) -> list[BadAudio]:
    """Every utterance of ``corpus`` whose audio span cannot be used, with the reason (decodes each once)."""
    bad = []
    for u in tqdm(corpus.utterances, desc="check audio", unit="utt", disable=not progress):
        try:
            load_audio(u.path, start=u.start, end=u.end)
        except AudioError as err:
            reason = str(err)
            reason = reason[len(u.path) + 2:] if reason.startswith(f"{u.path}: ") else reason
            bad.append(BadAudio(u.utt_id, u.path, reason))
    return bad


def _checked_marker(corpus: Corpus) -> Path:
    return cache_root() / "audio-checks" / f"{corpus.fingerprint()[:32]}.json"


def check_corpus_audio(corpus: Corpus, *, skip_bad: bool = False,
                       progress: bool = False) -> tuple[Corpus, list[BadAudio]]:
    """``corpus`` with good audio only and what was dropped; :class:`AudioError` listing every bad file otherwise.

    Without ``skip_bad`` any bad file stops the run (exit 2) with all of them named. With it, the
    bad utterances are left out and returned. An all-good corpus is remembered, so a rerun on
    unchanged files does not decode them again.
    """
    marker = _checked_marker(corpus)
    if marker.is_file():
        return corpus, []
    bad = find_bad_audio(corpus, progress=progress)
    if not bad:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps({"corpus": corpus.name, "n_utterances": len(corpus)}))
        except OSError:
            pass  # a read-only cache only costs checking again next time
        return corpus, []
    if not skip_bad:
        listed = "; ".join(f"{b.path}: {b.reason}" for b in bad)
        raise AudioError(f"{len(bad)} of {len(corpus)} audio files of corpus {corpus.name} are bad: {listed} "
                         "(fix or remove them, or pass --skip-bad-audio to audit without them)")
    dropped = {b.utt_id for b in bad}
    kept = [u for u in corpus.utterances if u.utt_id not in dropped]
    if not kept:
        raise AudioError(f"corpus {corpus.name}: every one of its {len(corpus)} audio files is bad "
                         f"(first: {bad[0].path}: {bad[0].reason})")
    return Corpus(corpus.name, kept, corpus.filters, corpus.segment_seconds), bad


def skipped_weakening(bad: list[BadAudio], n_total: int) -> list[str]:
    """The weakening line when ``--skip-bad-audio`` dropped more than :data:`WEAKENING_FRACTION` of the corpus."""
    if not bad or len(bad) <= WEAKENING_FRACTION * n_total:
        return []
    return [f"--skip-bad-audio: {len(bad)} of {n_total} utterances ({len(bad) / n_total:.1%}) left out for bad audio "
            f"(more than {WEAKENING_FRACTION:.0%}); listed under skipped_audio"]


__all__ = ["BadAudio", "WEAKENING_FRACTION", "check_corpus_audio", "find_bad_audio", "skipped_weakening"]
