"""Noun-phrase extraction with spaCy, and the character-to-token mapping."""

from __future__ import annotations

import pytest

from hg_lmm.evaluation.phrases import (
    NounPhrase,
    extract_noun_phrases,
    load_spacy,
    phrase_token_span,
)


@pytest.fixture(scope="module")
def nlp():
    try:
        return load_spacy()
    except (ImportError, OSError) as error:
        pytest.skip(f"no spaCy English pipeline installed: {error}")


def test_noun_phrases_with_spans(nlp) -> None:
    text = "A man in a red shirt rides a horse next to the river, and it looks at the image."
    phrases = extract_noun_phrases(text, nlp=nlp)
    assert [p.text for p in phrases] == ["A man", "a red shirt", "a horse", "the river"]
    for phrase in phrases:
        assert text[phrase.start : phrase.end] == phrase.text
    assert [p.start for p in phrases] == sorted(p.start for p in phrases)


def test_repeats_and_filters(nlp) -> None:
    text = "A dog chases a ball. A dog sleeps."
    unique = extract_noun_phrases(text, nlp=nlp)
    assert [(p.text, p.start) for p in unique] == [("A dog", 0), ("a ball", 13)]
    every = extract_noun_phrases(text, nlp=nlp, unique=False)
    assert [(p.text, p.start) for p in every] == [("A dog", 0), ("a ball", 13), ("A dog", 21)]
    kept = extract_noun_phrases(
        "It is the image.", nlp=nlp, skip_containing=(), unique=False, drop_non_groundable=False
    )
    assert [p.text for p in kept] == ["It", "the image"]
    assert extract_noun_phrases("It is the image.", nlp=nlp) == []


def test_fallback_to_whole_text(nlp) -> None:
    assert extract_noun_phrases("  running fast ", nlp=nlp) == []
    assert extract_noun_phrases("  running fast ", nlp=nlp, fallback_to_text=True) == [
        NounPhrase("running fast", 2, 14)
    ]


def test_load_spacy_names_the_fix() -> None:
    with pytest.raises(OSError, match="spacy download en_core_web_sm"):
        load_spacy("no_such_pipeline_xyz")


def test_phrase_token_span() -> None:
    # "a red shirt" with offsets as a fast tokenizer gives them, [BOS] first (zero width).
    offsets = [(0, 0), (0, 1), (1, 5), (5, 11), (11, 12)]  # "a", " red", " shirt", "."
    assert phrase_token_span(2, 11, offsets) == (2, 4)  # "red shirt"
    assert phrase_token_span(0, 11, offsets) == (1, 4)
    with pytest.raises(ValueError, match="no token overlaps"):
        phrase_token_span(20, 25, offsets)
