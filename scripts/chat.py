"""Grounded chat in the terminal: the frozen LMM answers a question about an image, the noun
phrases of the answer (as in GCG) are grounded, and you get the answer with numbered phrases, an
overlay PNG (one colour per phrase, outlines, a legend) and a JSON with the phrases' masks (RLE).

    python scripts/chat.py CONFIG --checkpoint CKPT --image IMG [--question Q]
    python scripts/chat.py CONFIG --checkpoint CKPT --image IMG --expression "the red circle"

--expression is plain referring segmentation: one mask for the phrase, no generation. Without
--question or --expression, questions are read from the terminal until an empty line or EOF (a
line `/refer PHRASE` segments PHRASE); each is answered on its own, with no memory of the others.
Files go to --output-dir as <name>.png and <name>.json (<name>_<n> in the interactive mode).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from hg_lmm.chat import chat_arg_parser

    parser = chat_arg_parser(__doc__)
    parser.add_argument("--image", required=True, help="the image to talk about")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--question", help="ask this and exit (default: ask interactively)")
    what.add_argument("--expression", help="segment this phrase (no generation) and exit")
    parser.add_argument("--output-dir", default="work_dirs/chat", help="default %(default)s")
    parser.add_argument("--name", help="output file stem (default: the image's stem)")
    return parser.parse_args(argv)


def report(chat, turn, image, args: argparse.Namespace, stem: str) -> None:
    """Print the numbered answer and the phrases, and write the overlay and the JSON."""
    from hg_lmm.chat import save_turn

    color = sys.stdout.isatty()
    if turn.mode == "chat":
        print(f"answer: {turn.numbered_answer(color=color) or '(the LMM generated nothing)'}")
    total = image.width * image.height
    for k, (phrase, area) in enumerate(zip(turn.phrases, turn.areas())):
        print(f"  {k + 1}. {phrase}: {area} pixels ({100 * area / total:.1f}% of the image)")
    if not turn.phrases:
        print("  (no phrase to ground)")
    png, js = save_turn(
        turn,
        image,
        args.output_dir,
        stem,
        {
            "image": {"path": args.image, "width": image.width, "height": image.height},
            "config": args.config,
            "checkpoint": args.checkpoint,
            "threshold": chat.mask_threshold,
        },
    )
    print(f"overlay: {png}\nmasks:   {js}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from hg_lmm.chat import ImageError, load_chat_from_args, load_user_image

    try:  # before loading the model, so that a wrong path fails in a second
        image = load_user_image(args.image, max_pixels=args.max_pixels)
    except ImageError as error:
        raise SystemExit(f"chat: {error}") from error
    chat = load_chat_from_args(args)
    stem = args.name or Path(args.image).stem
    if args.expression is not None:
        report(chat, chat.refer(image, args.expression), image, args, stem)
        return
    if args.question is not None:
        report(chat, chat.ask(image, args.question), image, args, stem)
        return
    print(f"Ask about {args.image} (empty line or Ctrl-D to quit; /refer PHRASE to segment).")
    for turn_index in range(1, sys.maxsize):
        try:
            line = input("question> ").strip()
        except EOFError:
            break
        if not line:
            break
        command, _, rest = line.partition(" ")
        try:
            if command == "/refer":
                turn = chat.refer(image, rest)
            else:
                turn = chat.ask(image, line)
        except ValueError as error:  # an empty phrase, a phrase with no token: ask again
            print(f"chat: {error}")
            continue
        report(chat, turn, image, args, f"{stem}_{turn_index}")


if __name__ == "__main__":
    main()
