"""Character CTC pieces shared by the ASR utility probe and the adversarial defense's utility head.

Targets are the transcripts as spoken (lower case, other characters as spaces: "six one" stays
two words rather than the normaliser's "61"), spelled over a fixed alphabet; index 0 is the CTC
blank. Scores (CER, WER) normalise hypothesis and reference alike with
:func:`audit.text.normalize_text`, the project's one normaliser.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Characters a normalised transcript is spelled with (anything else is dropped); index + 1 is the label.
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz0123456789"
BLANK = 0


def vocab_size() -> int:
    """Output classes of a CTC head: the alphabet plus the blank."""
    return len(ALPHABET) + 1


def encode(text: str) -> list[int]:
    """Label sequence of a transcript: lower-cased, characters outside the alphabet as spaces, spaces collapsed."""
    spelled = " ".join("".join(c if c in ALPHABET else " " for c in text.lower().replace("\u2019", "'")).split())
    return [ALPHABET.index(c) + 1 for c in spelled]


def decode(labels: Sequence[int]) -> str:
    """Text of a label sequence (blanks dropped, spaces collapsed)."""
    return " ".join("".join(ALPHABET[i - 1] for i in labels if i != BLANK).split())


def greedy_decode(log_probs: np.ndarray) -> str:
    """Best-path CTC decoding of ``(T, V)`` scores: argmax per frame, repeats merged, blanks removed."""
    best = np.asarray(log_probs).argmax(-1)
    if best.size == 0:
        return ""
    keep = np.concatenate([[True], best[1:] != best[:-1]])
    return decode([int(i) for i in best[keep] if i != BLANK])


__all__ = ["ALPHABET", "BLANK", "decode", "encode", "greedy_decode", "vocab_size"]
