"""Caption pieces -> token ids and per-token mask ids (docs/architecture.md, "Preprocessing").

The prompt is encoded once, with special tokens (BOS), and its tokens get mask_id -1. Each piece
is then encoded on its own, without special tokens, and the lists are concatenated: the caption is
never encoded as one string, so every token belongs to exactly one piece. A piece's tokens get its
mask_id. A RefCOCO expression is followed by the last token of `encode('.')` (mask_id -1).

The prompt text comes from the LMM adapter, so datasets stay LMM-agnostic:
  DeepSeek-VL: 'User: ' + '<image_placeholder>' * 576
               + 'Please give me a description of the image.\\n\\nAssistant:'
  LLaVA:       'USER: <image>\\nPlease give me a description of the image. ASSISTANT:'
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hg_lmm.datasets.errors import AnnotationError, EmptyPieceError
from hg_lmm.datasets.report import DataNote, attach_note, in_worker
from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.utils.build import build

logger = logging.getLogger(__name__)


def _period_token(tokenizer: Any) -> int:
    ids = tokenizer.encode(".", add_special_tokens=False)
    if not ids:
        raise ValueError(f"{type(tokenizer).__name__} encodes '.' to no token; cannot end pieces.")
    # Sentencepiece tokenizers give ['▁', '.']; the period itself is the last token.
    return int(ids[-1])


def encode_pieces(
    tokenizer: Any,
    prompt: str | Sequence[int],
    pieces: Sequence[Piece],
    *,
    source: str = "",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and mask ids of prompt + pieces.

    Arguments:
      tokenizer: a HF tokenizer (`encode(text, add_special_tokens=...)`).
      prompt: the prompt text, or its token ids already encoded with special tokens.
      pieces: caption pieces in order.
      source: names the sample in errors.

    Returns:
      input_ids [T] long, mask_ids [T] long (-1 for prompt, unmasked pieces and periods),
      caption_start (the number of prompt tokens at the start).

    Raises EmptyPieceError when a piece that owns a mask encodes to no token. An unmasked piece
    that encodes to nothing (e.g. an empty utterance) just contributes no token.
    """
    prompt_ids = (
        tokenizer.encode(prompt, add_special_tokens=True)
        if isinstance(prompt, str)
        else list(prompt)
    )
    input_ids = list(prompt_ids)
    mask_ids = [-1] * len(prompt_ids)
    period: int | None = None
    for k, piece in enumerate(pieces):
        ids = tokenizer.encode(piece.text, add_special_tokens=False)
        if not ids and piece.mask_id >= 0:
            raise EmptyPieceError(
                f"{source or 'sample'}: piece {k} {piece.text!r} (mask {piece.mask_id}) encodes to "
                "no token, so its mask cannot be grounded; fix or drop this phrase."
            )
        input_ids += ids
        mask_ids += [piece.mask_id] * len(ids)
        if piece.period_after:
            if period is None:
                period = _period_token(tokenizer)
            input_ids.append(period)
            mask_ids.append(-1)
    return (
        torch.tensor(input_ids, dtype=torch.long),
        torch.tensor(mask_ids, dtype=torch.long),
        len(prompt_ids),
    )


class TokenizePieces:
    """Dataset transform: fills `input_ids`, `mask_ids` and `caption_start` of a GroundingSample.

    Arguments:
      tokenizer: the LMM's tokenizer.
      prompt: the LMM's training prompt (see the module docstring), or a config dict that builds
        it (`dict(type=deepseek_vl_train_prompt, num_image_tokens=576)`, what the configs hold:
        mmengine dumps an imported string constant as its dotted name, which a reloaded config
        would then read as the prompt); encoded once, here.
      drop_ungroundable: the training policy for phrases that cannot be learnt from. A phrase
        whose ground-truth mask is empty (nothing to segment: a degenerate polygon) or whose text
        encodes to no token (nothing to ground it on) is dropped: its text stays in the caption as
        an unmasked piece, its mask is removed, and the rest of the image still trains. Each drop
        is reported once (a `DataNote`, see `hg_lmm.datasets.report`) and counted in the training
        summary; a sample left without any phrase raises a DatasetError, which `SkipBadSamples`
        turns into a skip. With False (evaluation: every phrase is scored) nothing is dropped and
        an empty phrase raises `EmptyPieceError`.
    """

    def __init__(
        self, *, tokenizer: Any, prompt: str | Mapping[str, Any], drop_ungroundable: bool = True
    ) -> None:
        # A config dict (xtuner style, e.g. dict(type=AutoTokenizer.from_pretrained, ...)) too.
        tokenizer = build(tokenizer)
        prompt = build(prompt)
        if not isinstance(prompt, str):
            raise TypeError(
                "TokenizePieces needs the prompt as a string (or a config dict that builds one), "
                f"got {type(prompt).__name__}; e.g. prompt=dict(type=llava_train_prompt)"
            )
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
        self.drop_ungroundable = drop_ungroundable
        self._reported: set[str] = set()

    def __call__(self, sample: GroundingSample) -> GroundingSample:
        if self.drop_ungroundable:
            sample = self._drop_ungroundable(sample)
        input_ids, mask_ids, caption_start = encode_pieces(
            self.tokenizer, self.prompt_ids, sample.pieces, source=sample.source
        )
        return dataclasses.replace(
            sample, input_ids=input_ids, mask_ids=mask_ids, caption_start=caption_start
        )

    def _drop_ungroundable(self, sample: GroundingSample) -> GroundingSample:
        reasons: dict[int, tuple[str, str]] = {}
        for k in range(sample.num_masks):
            if not bool(sample.masks[k].any()):
                reasons[k] = ("empty_mask", "its ground-truth mask is empty")
        for piece in sample.pieces:
            if piece.mask_id >= 0 and piece.mask_id not in reasons:
                if not self.tokenizer.encode(piece.text, add_special_tokens=False):
                    reasons[piece.mask_id] = ("dropped_phrase", "it encodes to no token")
        if not reasons:
            return sample
        keep = [k for k in range(sample.num_masks) if k not in reasons]
        texts = {p.mask_id: p.text for p in sample.pieces if p.mask_id >= 0}
        notes = []
        for k, (kind, why) in sorted(reasons.items()):
            key = f"{sample.source}, mask {k}"
            message = f"{sample.source}: dropped phrase {k} {texts.get(k, '')!r}: {why}"
            log = key not in self._reported and not in_worker()
            if log:
                self._reported.add(key)
                logger.warning("%s (the rest of the sample still trains)", message)
            notes.append(DataNote(kind, key, message, logged=log))
        if not keep:
            only_text = all(kind == "dropped_phrase" for kind, _ in reasons.values())
            error = EmptyPieceError if only_text else AnnotationError
            dropped = "; ".join(f"phrase {k}: {why}" for k, (_, why) in sorted(reasons.items()))
            raise error(
                f"{sample.source}: no phrase left to train on ({dropped}); fix the annotation "
                "or drop this sample"
            )
        new_id = {old: new for new, old in enumerate(keep)}
        pieces = [dataclasses.replace(p, mask_id=new_id.get(p.mask_id, -1)) for p in sample.pieces]
        out = dataclasses.replace(
            sample,
            pieces=pieces,
            masks=sample.masks[keep],
            plural=[sample.plural[k] for k in keep],
            isthing=[sample.isthing[k] for k in keep],
            extra=dict(sample.extra),
        )
        for note in notes:
            attach_note(out, note)
        return out
