"""The project's one WER: text normalisation and jiwer word error rates.

Every WER in a report (the ASR judge of the inversion attack, the utility ASR
probe) goes through :func:`normalize_text` on both the reference and the
hypothesis, so LibriSpeech's upper-case unpunctuated references and Whisper's
cased, punctuated output are compared word for word.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

ABBREVIATIONS: dict[str, str] = {
    "MR.": "MISTER",
    "MRS.": "MISSUS",
    "DR.": "DOCTOR",
    "ST.": "SAINT",
}
"""Upper-cased abbreviations (with their period) expanded before punctuation is stripped."""

_ABBREVIATION_RE = re.compile(
    r"(?<![A-Z0-9'])(" + "|".join(re.escape(a) for a in ABBREVIATIONS) + r")(?![A-Z0-9'])"
)
_NOT_KEPT_RE = re.compile(r"[^\w\s']|_")
_SPACES_RE = re.compile(r"\s+")


def normalize_text(s: str) -> str:
    """Normalise a transcript for WER.

    In order: map the typographic apostrophe U+2019 to ``'``; upper-case
    (``str.upper``); replace the whole words ``MR.``,
    ``MRS.``, ``DR.``, ``ST.`` by ``MISTER``, ``MISSUS``, ``DOCTOR``,
    ``SAINT``; replace every character that is neither a word character
    (Unicode letter, digit) nor whitespace nor an apostrophe ``'`` by a space
    (so ``"BOX-CAR"`` becomes two words, ``"HALE'S"`` stays one); collapse
    runs of whitespace into one space and strip the ends. Numbers are left as
    written (``"10"`` does not become ``"TEN"``).

    Parameters
    ----------
    s : str

    Returns
    -------
    str

    Examples
    --------
    >>> normalize_text("Mr. Hale's  cat!")
    "MISTER HALE'S CAT"
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_text expects a str, got {type(s).__name__}: {s!r}")
    text = s.replace("\u2019", "'").upper()
    text = _ABBREVIATION_RE.sub(lambda m: ABBREVIATIONS[m.group(1)], text)
    text = _NOT_KEPT_RE.sub(" ", text)
    return _SPACES_RE.sub(" ", text).strip()


def wer_counts(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list[int]]:
    """Per-utterance edit counts after :func:`normalize_text` on both sides.

    Parameters
    ----------
    references, hypotheses : sequence of str
        Same length.

    Returns
    -------
    dict
        ``substitutions``, ``deletions``, ``insertions``, ``n_ref_words``: one
        int per utterance (jiwer's minimum-edit alignment of words; an empty
        side counts every word of the other as a deletion or insertion).
    """
    import jiwer

    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"references and hypotheses must have the same length, got {len(refs)} and {len(hyps)}")
    counts: dict[str, list[int]] = {"substitutions": [], "deletions": [], "insertions": [], "n_ref_words": []}
    for ref, hyp in zip(refs, hyps):
        ref_words, hyp_words = normalize_text(ref).split(), normalize_text(hyp).split()
        if ref_words and hyp_words:
            out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
            edits = (int(out.substitutions), int(out.deletions), int(out.insertions))
        else:
            edits = (0, len(ref_words), len(hyp_words))
        counts["substitutions"].append(edits[0])
        counts["deletions"].append(edits[1])
        counts["insertions"].append(edits[2])
        counts["n_ref_words"].append(len(ref_words))
    return counts


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, dict[str, Any]]:
    """Corpus-level word error rate after :func:`normalize_text` on both sides.

    ``WER = (S + D + I) / N`` summed over all utterances: ``S``, ``D``, ``I``
    the substitutions, deletions and insertions of jiwer's word alignment of
    each normalised pair, ``N`` the number of normalised reference words. Not
    the mean of per-utterance WERs.

    Parameters
    ----------
    references, hypotheses : sequence of str
        Same length; the references must contain at least one word in total.

    Returns
    -------
    wer : float
        ``>= 0``; can exceed 1 with many insertions.
    extra : dict
        ``substitutions``, ``deletions``, ``insertions``, ``n_ref_words``
        (corpus totals), ``n_utterances``.

    Examples
    --------
    >>> wer(["the cat sat"], ["The cat sat."])[0]
    0.0
    """
    counts = wer_counts(references, hypotheses)
    totals = {key: int(sum(values)) for key, values in counts.items()}
    if totals["n_ref_words"] == 0:
        raise ValueError("WER is undefined: the references contain no words after normalisation")
    errors = totals["substitutions"] + totals["deletions"] + totals["insertions"]
    return errors / totals["n_ref_words"], {**totals, "n_utterances": len(counts["n_ref_words"])}


def utterance_wer(ref: str, hyp: str) -> float:
    """WER of one utterance: :func:`wer` of the one-element corpus ``([ref], [hyp])``.

    Raises ``ValueError`` if ``ref`` has no words after normalisation.

    Examples
    --------
    >>> utterance_wer("a b c d", "a x c")
    0.5
    """
    return wer([ref], [hyp])[0]
