"""Grounded chat for users: ask the frozen LMM about an image, then ground its answer's phrases.

The terminal CLI (`scripts/chat.py`) and the web demo (`scripts/web_demo.py`) are thin shells over
this module; the work itself is the evaluation's: `caption_and_ground` (the LMM answers, spaCy
finds the noun phrases exactly as in GCG, `model.ground` gives one mask per phrase) and `refer`
(plain referring segmentation of one expression, no generation).

Each question is answered on its own: the adapters keep no conversation history.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hg_lmm.evaluation.grounding import GroundedAnswer, caption_and_ground, refer
from hg_lmm.utils.files import write_json_atomic
from hg_lmm.utils.overlay import draw_overlay, hex_color, phrase_color
from hg_lmm.utils.rle import mask_to_rle

# Larger images are refused before they are decoded: the masks are computed at the original size,
# so a 100-megapixel upload would cost gigabytes. 25 MP holds any phone photo.
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_NEW_TOKENS = 256


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def load_user_image(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open an image file for grounding: checked, upright (EXIF orientation applied), RGB.

    Arguments:
      path: the file.
      max_pixels: refuse images with more pixels than this (checked before decoding).

    Returns:
      The decoded RGB image. Raises `ImageError` for a missing file, a file that is not an
      image, a corrupt one, or one larger than `max_pixels`.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ImageError(f"{path}: no such image file; pass the path of a PNG or JPEG image")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name} is {width}x{height} = {width * height:,} pixels, more than the "
                    f"limit of {max_pixels:,}; downscale it first"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # beyond PIL's own limit, refused by Image.open
        raise ImageError(f"{name} is too large: {error}; downscale it first") from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{name} is not an image that can be read; upload a PNG, JPEG, WebP or BMP file"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or malformed data
        raise ImageError(f"{name} is corrupt or truncated ({error}); re-save the image") from error
    if min(image.size) < 1:
        raise ImageError(f"{name} has no pixels ({width}x{height})")
    return image


@dataclass
class ChatTurn:
    """One grounded reply.

    Fields:
      mode: "chat" (a question answered by the LMM) or "expression" (referring segmentation).
      prompt: the question or the expression.
      answer: the LMM's answer ("" when it generated nothing); the expression in "expression" mode.
      phrases: the grounded phrases, numbered from 1 in this order.
      spans: each phrase's `(start, end)` characters in `answer`.
      masks: [n, H, W] bool masks at the image's size, `masks[k]` for `phrases[k]`.
    """

    mode: str
    prompt: str
    answer: str
    phrases: list[str]
    spans: list[tuple[int, int]]
    masks: torch.Tensor

    @classmethod
    def from_grounded(cls, mode: str, prompt: str, grounded: GroundedAnswer) -> ChatTurn:
        return cls(mode, prompt, grounded.text, grounded.phrases, grounded.spans, grounded.masks)

    def segments(self) -> list[tuple[str, str | None]]:
        """The answer as (text, phrase number or None) pieces, for highlighted display."""
        out: list[tuple[str, str | None]] = []
        position = 0
        for k, (start, end) in enumerate(self.spans):
            if start > position:
                out.append((self.answer[position:start], None))
            out.append((self.answer[start:end], str(k + 1)))
            position = end
        if position < len(self.answer):
            out.append((self.answer[position:], None))
        return out

    def numbered_answer(self, *, color: bool = False) -> str:
        """The answer with each phrase as `[k: phrase]` (in its overlay colour with `color`)."""
        parts = []
        for text, label in self.segments():
            if label is None:
                parts.append(text)
                continue
            piece = f"[{label}: {text}]"
            if color:  # 24-bit ANSI foreground, the phrase's overlay colour
                r, g, b = phrase_color(int(label) - 1)
                piece = f"\x1b[1;38;2;{r};{g};{b}m{piece}\x1b[0m"
            parts.append(piece)
        return "".join(parts)

    def areas(self) -> list[int]:
        """Foreground pixels of each mask."""
        return [int(m.sum()) for m in self.masks]

    def overlay(self, image: Image.Image) -> Image.Image:
        """The image with every phrase's mask in its colour, outlines and a numbered legend."""
        return draw_overlay(image, self.masks, self.phrases)

    def record(self) -> dict[str, Any]:
        """JSON-safe record: prompt, answer and per phrase its text, span, colour, area and
        COCO RLE mask (`hg_lmm.utils.rle.rle_to_mask` decodes it)."""
        key = "question" if self.mode == "chat" else "expression"
        phrases = [
            {
                "id": k + 1,
                "text": text,
                "start": start,
                "end": end,
                "color": hex_color(k),
                "area": area,
                "mask": mask_to_rle(mask),
            }
            for k, (text, (start, end), area, mask) in enumerate(
                zip(self.phrases, self.spans, self.areas(), self.masks)
            )
        ]
        return {"mode": self.mode, key: self.prompt, "answer": self.answer, "phrases": phrases}


class GroundedChat:
    """A loaded model that answers and grounds, one request at a time.

    Arguments:
      model: a `GroundingModel` in eval mode.
      threshold: mask threshold (default: the model's).
      max_new_tokens: generation budget per answer.
      nlp: a loaded spaCy pipeline (default: loaded on the first question).
    """

    def __init__(
        self,
        model: Any,
        *,
        threshold: float | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        nlp: Any = None,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.max_new_tokens = max_new_tokens
        self.nlp = nlp
        # One model, one request at a time: generation and grounding are not re-entrant.
        self._lock = threading.Lock()

    @property
    def mask_threshold(self) -> float:
        """The threshold the masks are cut at (this chat's, else the model's)."""
        return float(self.model.threshold if self.threshold is None else self.threshold)

    def ask(self, image: Image.Image, question: str) -> ChatTurn:
        """Answer `question` about `image` and ground the noun phrases of the answer."""
        question = question.strip()
        if not question:
            raise ValueError("the question is empty; type a question about the image")
        from hg_lmm.evaluation.phrases import load_spacy

        with self._lock, torch.no_grad():
            if self.nlp is None:
                self.nlp = load_spacy()
            grounded = caption_and_ground(
                self.model,
                image,
                question,
                max_new_tokens=self.max_new_tokens,
                threshold=self.threshold,
                nlp=self.nlp,
            )
        return ChatTurn.from_grounded("chat", question, grounded)

    def refer(self, image: Image.Image, expression: str) -> ChatTurn:
        """One mask for `expression` (referring segmentation, no generation)."""
        with self._lock, torch.no_grad():
            grounded = refer(self.model, image, expression, threshold=self.threshold)
        return ChatTurn.from_grounded("expression", expression.strip(), grounded)


def chat_arg_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments the chat CLI and the web demo share: CONFIG, --checkpoint, --threshold,
    --max-new-tokens, --max-pixels, --device, --unsafe-load (`load_chat_from_args` reads them)."""
    from hg_lmm.evaluation.runner import open_unit_interval, positive_int

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="mmengine config that builds the model (cfg.model)")
    parser.add_argument("--checkpoint", required=True, help="the trained head (.pth/.safetensors)")
    parser.add_argument(
        "--threshold", type=open_unit_interval, help="mask threshold (default: model's)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, help="refuse larger images"
    )
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow a checkpoint that needs arbitrary unpickling (only for trusted files)",
    )
    return parser


def load_chat_from_args(args: argparse.Namespace) -> GroundedChat:
    """`load_chat` with the `chat_arg_parser` arguments."""
    return load_chat(
        args.config,
        args.checkpoint,
        unsafe=args.unsafe_load,
        device=args.device,
        threshold=args.threshold,
        max_new_tokens=args.max_new_tokens,
    )


def load_chat(
    config: str,
    checkpoint: str | None,
    *,
    unsafe: bool = False,
    device: str | None = None,
    threshold: float | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> GroundedChat:
    """Build the model of `config`, load `checkpoint` (the evaluation's loader) and wrap it.

    `device` defaults to CUDA when available, else CPU.
    """
    from hg_lmm.evaluation.runner import load_model

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(config, checkpoint, unsafe=unsafe, device=device)
    return GroundedChat(model, threshold=threshold, max_new_tokens=max_new_tokens)


def save_turn(
    turn: ChatTurn,
    image: Image.Image,
    out_dir: str | os.PathLike,
    stem: str,
    meta: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write `<out_dir>/<stem>.png` (the overlay) and `<stem>.json` (`turn.record()` plus `meta`,
    e.g. the image file, config and checkpoint).

    Returns:
      (overlay path, JSON path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / f"{stem}.png", out / f"{stem}.json"
    turn.overlay(image).save(png)
    write_json_atomic(js, {**turn.record(), **(meta or {})}, indent=2)
    return png, js


__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_MAX_PIXELS",
    "ChatTurn",
    "GroundedChat",
    "ImageError",
    "chat_arg_parser",
    "load_chat",
    "load_chat_from_args",
    "load_user_image",
    "save_turn",
]
