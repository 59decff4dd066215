"""Tests of the WER text normalisation (Whisper's English normaliser)."""

from __future__ import annotations

import pytest

from audit.text import english_normalizer, normalize_text, wer


@pytest.mark.parametrize("raw, expected", [
    ("'HELLO ' HE SAID", "hello he said"),
    ("\u2018Hello,\u2019 he said. \u201cGo!\u201d", "hello he said go"),
    ("Mr. Hale's  cat!", "mister hale is cat"),
    ("Dr. Grey met Mrs. Poole in St. Ives.", "doctor grey met missus poole in saint ives"),
    ("He said: \u201cdon\u2019t!\u201d", "he said do not"),
    ("I won't go; you can't.", "i will not go you can not"),
    ("  the box-car, 10 miles  ", "the box car 10 miles"),
    ("Um, the [noise] answer (aside) is uh yes", "the answer is yes"),
    ("twenty-one", "21"),
    ("", ""),
    ("!!", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("spelled, written", [
    ("TEN", "10"),
    ("HE WAITED TEN MINUTES", "He waited 10 minutes."),
    ("ONE HUNDRED AND TWENTY THREE MEN", "123 men"),
    ("TEN POUNDS", "\u00a310"),
    ("THE NINETEENTH CENTURY", "the 19th century"),
])
def test_numbers_written_or_spelled_compare_equal(spelled, written):
    assert normalize_text(spelled) == normalize_text(written)
    assert wer([spelled], [written])[0] == 0.0


def test_case_insensitive():
    assert normalize_text("HeLLo WORLD") == normalize_text("hello world") == "hello world"
    assert wer(["MISTER THORNTON MADE HIS CONFESSION"], ["Mr. Thornton made his confession."])[0] == 0.0


def test_one_normaliser_with_an_empty_read_only_spelling_map():
    normaliser = english_normalizer()
    assert english_normalizer() is normaliser
    mapping = normaliser.standardize_spellings.mapping
    assert len(mapping) == 0
    with pytest.raises(TypeError):
        mapping["colour"] = "color"
    assert normalize_text("colour") == "colour"


def test_rejects_non_strings():
    with pytest.raises(TypeError, match="expects a str"):
        normalize_text(None)
