"""Grounded chat in the browser (Gradio): upload an image, ask a question, and see the answer with
its grounded phrases in colour next to the overlay; a second tab segments a referring expression.

    python scripts/web_demo.py CONFIG --checkpoint CKPT [--host 127.0.0.1] [--port 7860]

The model loads once, before the server starts; requests run one at a time, in arrival order.
Uploads that are not images, or larger than --max-pixels / --max-file-size, are refused with a
message. The server binds to 127.0.0.1 (this machine only) unless --host says otherwise; to reach
it from elsewhere, prefer an SSH tunnel (`ssh -L 7860:127.0.0.1:7860 host`) over --host 0.0.0.0,
since the demo has no authentication.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("web_demo")

INTRO = (
    "### HG-LMM: grounded chat with a frozen LMM\n"
    "Upload an image and ask about it: the LMM answers, and every noun phrase of its answer "
    "is segmented, in the colour it has in the answer. The LMM never trains, so it chats as "
    "it always did. Each question is answered on its own (no conversation memory)."
)


def _upload_path(payload: Any) -> str | None:
    """The server-side path of an uploaded file (the raw, unprocessed Gradio payload)."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    return str(payload)


def build_demo(chat: Any, *, max_pixels: int, files_dir: str) -> Any:
    """The Gradio app around a loaded `GroundedChat`.

    Arguments:
      chat: the `hg_lmm.chat.GroundedChat` every request goes through.
      max_pixels: larger uploads are refused with a message.
      files_dir: where each reply's JSON (answer, phrases, RLE masks) is written for download.

    Returns:
      The `gr.Blocks` app (not launched).
    """
    import gradio as gr

    from hg_lmm.chat import ImageError, load_user_image, save_turn
    from hg_lmm.utils.overlay import hex_color

    def read_image(payload: Any) -> Any:
        path = _upload_path(payload)
        if not path:
            raise gr.Error("Upload an image first.")
        try:
            return load_user_image(path, max_pixels=max_pixels)
        except ImageError as error:
            # The message names the server's temporary copy; show the user's own file name.
            name = payload.get("orig_name") if isinstance(payload, dict) else None
            message = str(error).replace(os.path.basename(path), name or "the upload")
            raise gr.Error(message) from error

    def run(kind: str, payload: Any, text: str) -> tuple[Any, Any, Any]:
        image = read_image(payload)
        try:
            turn = chat.ask(image, text) if kind == "chat" else chat.refer(image, text)
        except ValueError as error:  # an empty question, a phrase with no token
            raise gr.Error(str(error)) from error
        except Exception as error:
            logger.exception("request failed")
            raise gr.Error(
                f"the model failed on this request ({type(error).__name__}); see the server log"
            ) from error
        _, record = save_turn(turn, image, files_dir, f"{kind}_{uuid.uuid4().hex[:12]}")
        segments = turn.segments()
        colors = {str(k + 1): hex_color(k) for k in range(len(turn.phrases))}
        answer = gr.HighlightedText(value=segments or [("(no answer)", None)], color_map=colors)
        return answer, turn.overlay(image), str(record)

    def ask(payload: Any, question: str) -> tuple[Any, Any, Any]:
        return run("chat", payload, question)

    def segment(payload: Any, expression: str) -> tuple[Any, Any, Any]:
        return run("expression", payload, expression)

    # Uploads and replies are temporary files: drop those older than an hour, every hour.
    blocks = gr.Blocks(
        title="HG-LMM grounded chat", analytics_enabled=False, delete_cache=(3600, 3600)
    )
    with blocks as demo:
        gr.Markdown(INTRO)
        for kind, tab, prompt, button, handler in (
            ("chat", "Grounded chat", "Question", "Ask", ask),
            ("refer", "Referring segmentation", "Expression", "Segment", segment),
        ):
            with gr.Tab(tab, elem_id=f"{kind}-tab"):
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(
                            label="Image",
                            type="filepath",
                            sources=["upload"],
                            elem_id=f"{kind}-image",
                        )
                        text = gr.Textbox(label=prompt, lines=2, elem_id=f"{kind}-text")
                        go = gr.Button(button, variant="primary", elem_id=f"{kind}-submit")
                    with gr.Column():
                        answer = gr.HighlightedText(
                            label="Answer" if kind == "chat" else "Phrase",
                            show_legend=False,
                            elem_id=f"{kind}-answer",
                        )
                        overlay = gr.Image(
                            label="Grounded phrases",
                            type="pil",
                            format="png",
                            interactive=False,
                            elem_id=f"{kind}-overlay",
                        )
                        record = gr.File(label="Masks (JSON, COCO RLE)", elem_id=f"{kind}-json")
                # Raw payloads: the upload is checked here, with a message, not decoded blindly.
                for trigger in (go.click, text.submit):
                    trigger(handler, [image, text], [answer, overlay, record], preprocess=False)
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    from hg_lmm.chat import chat_arg_parser, load_chat_from_args

    parser = chat_arg_parser(__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address; default %(default)s")
    parser.add_argument("--port", type=int, default=7860, help="default %(default)s")
    parser.add_argument("--max-file-size", default="50mb", help="upload limit; default %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # No telemetry or version check: the demo must start on machines without internet.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    chat = load_chat_from_args(args)
    with tempfile.TemporaryDirectory(prefix="hg_lmm_web_demo_") as files_dir:
        demo = build_demo(chat, max_pixels=args.max_pixels, files_dir=files_dir)
        # One request at a time (one model), a bounded waiting line.
        demo.queue(default_concurrency_limit=1, max_size=32)
        logger.info("model loaded; serving on http://%s:%d", args.host, args.port)
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            max_file_size=args.max_file_size,
            allowed_paths=[files_dir],
            ssr_mode=False,
            footer_links=[],
            show_error=True,
        )


if __name__ == "__main__":
    main()
