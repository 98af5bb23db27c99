"""Grounded chat (hg_lmm.chat) and its terminal CLI (scripts/chat.py) on the tiny model with the
golden-weight checkpoint, loaded through the evaluation's loader."""

from __future__ import annotations

import io
import json
import runpy
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.chat import ChatTurn, GroundedChat, ImageError, load_chat, load_user_image
from hg_lmm.evaluation.phrases import extract_noun_phrases
from hg_lmm.utils.overlay import draw_overlay
from hg_lmm.utils.rle import rle_to_mask
from tests.conftest import REPO, TINY_CONFIG

CHAT_CLI = str(REPO / "scripts" / "chat.py")
QUESTION = "What is in the image?"


@pytest.fixture(scope="module")
def chat(golden_checkpoint) -> GroundedChat:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        return load_chat(TINY_CONFIG, golden_checkpoint, device="cpu", max_new_tokens=12)


@pytest.fixture(scope="module")
def toy_image(toy_root) -> str:
    from hg_lmm.datasets.layout import refcoco_dataset

    return refcoco_dataset(toy_root, "refcoco", "val")[0].image_path


# --- images from users -------------------------------------------------------------------------


def test_load_user_image_refuses_what_it_cannot_use(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such image file"):
        load_user_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="notes.png is not an image"):
        load_user_image(tmp_path / "notes.png")
    Image.new("RGB", (300, 200), "red").save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"300x200 = 60,000 pixels, more than the limit of 50,000"):
        load_user_image(tmp_path / "big.png", max_pixels=50_000)
    Image.new("RGB", (300, 200), "red").save(tmp_path / "cut.jpg", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_user_image(tmp_path / "cut.jpg")


def test_load_user_image_is_upright_rgb(tmp_path) -> None:
    image = Image.new("RGBA", (40, 20), (10, 20, 30, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    image.convert("RGB").save(tmp_path / "phone.jpg", exif=exif)
    loaded = load_user_image(tmp_path / "phone.jpg")
    assert loaded.mode == "RGB" and loaded.size == (20, 40)
    image.save(tmp_path / "alpha.png")
    assert load_user_image(tmp_path / "alpha.png").mode == "RGB"


# --- a turn ------------------------------------------------------------------------------------


def _turn() -> ChatTurn:
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 3, 4] = True
    text = "There is a red circle and a blue square."
    return ChatTurn(
        "chat", "What?", text, ["a red circle", "a blue square"], [(9, 21), (26, 39)], masks
    )


def test_turn_numbers_its_phrases_and_records_their_masks() -> None:
    turn = _turn()
    assert turn.segments() == [
        ("There is ", None), ("a red circle", "1"), (" and ", None), ("a blue square", "2"),
        (".", None),
    ]  # fmt: skip
    assert turn.numbered_answer() == "There is [1: a red circle] and [2: a blue square]."
    assert "\x1b[1;38;2;31;119;180m[1: a red circle]\x1b[0m" in turn.numbered_answer(color=True)
    record = json.loads(json.dumps(turn.record()))
    assert record["question"] == "What?" and record["answer"] == turn.answer
    assert [p["text"] for p in record["phrases"]] == turn.phrases
    assert [p["area"] for p in record["phrases"]] == [10, 1]
    assert [p["color"] for p in record["phrases"]] == ["#1f77b4", "#ff7f0e"]
    for p, mask in zip(record["phrases"], turn.masks):
        assert np.array_equal(rle_to_mask(p["mask"]), mask.numpy())
        assert turn.answer[p["start"] : p["end"]] == p["text"]


# --- the model ---------------------------------------------------------------------------------


def test_ask_grounds_the_noun_phrases_of_the_answer(chat, toy_image) -> None:
    image = load_user_image(toy_image)
    turn = chat.ask(image, QUESTION)
    # The answer is the LMM's own greedy answer, and its phrases are GCG's.
    expected = chat.model.lmm.answer(image, QUESTION, max_new_tokens=12).text
    assert turn.answer == expected and turn.answer
    phrases = extract_noun_phrases(expected, nlp=chat.nlp, fallback_to_text=True)
    assert turn.phrases == [p.text for p in phrases] and turn.phrases
    assert all(turn.answer[s:e] == p for p, (s, e) in zip(turn.phrases, turn.spans))
    assert turn.masks.shape == (len(turn.phrases), image.height, image.width)
    assert turn.masks.dtype == torch.bool


def test_refer_equals_the_models_prediction_of_the_expression(chat, toy_root) -> None:
    """`refer` goes through `ground`; `predict` on the same tokenized expression (as RefCOCO
    evaluation builds it) is an independent path to the same mask."""
    import dataclasses

    from hg_lmm.datasets.layout import refcoco_dataset
    from hg_lmm.evaluation.runner import make_tokenize

    sample = refcoco_dataset(toy_root, "refcoco", "val")[0]
    piece = next(p for p in sample.pieces if p.mask_id == 0)
    single = dataclasses.replace(sample, pieces=[piece], masks=sample.masks[:1])
    expected = chat.model([make_tokenize(chat.model)(single)], mode="predict")[0]["masks"]
    turn = chat.refer(sample.image, f"  {piece.text} ")
    assert turn.mode == "expression" and turn.answer == turn.phrases[0] == piece.text
    assert torch.equal(turn.masks, expected)
    assert 0 < int(turn.masks.sum()) < turn.masks.numel()  # the golden head gives a real mask
    with pytest.raises(ValueError, match="expression is empty"):
        chat.refer(sample.image, "  ")
    with pytest.raises(ValueError, match="question is empty"):
        chat.ask(sample.image, "")


def test_requests_run_one_at_a_time(chat, toy_image) -> None:
    image = load_user_image(toy_image)
    active, peak = [0], [0]
    answer = chat.model.lmm.answer

    def counting_answer(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.2)  # long enough for the other thread to try to enter
        try:
            return answer(*args, **kwargs)
        finally:
            active[0] -= 1

    chat.model.lmm.answer = counting_answer
    try:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(chat.ask(image, QUESTION)))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        del chat.model.lmm.answer  # back to the class's method
    assert len(results) == 2 and peak[0] == 1
    assert results[0].answer == results[1].answer


# --- the CLI -----------------------------------------------------------------------------------


def _run_chat(argv, monkeypatch, stdin: str | None = None) -> None:
    monkeypatch.chdir(REPO)
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    runpy.run_path(CHAT_CLI, run_name="__cli__")["main"](list(argv))


def test_cli_answers_with_numbered_phrases_an_overlay_and_masks(
    golden_checkpoint, toy_image, tmp_path, monkeypatch, capsys
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--image", toy_image]
    argv += ["--max-new-tokens", "12", "--output-dir", str(tmp_path), "--name", "turn"]
    _run_chat([*argv, "--question", QUESTION], monkeypatch)
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "turn.json").read_text())
    image = Image.open(toy_image).convert("RGB")

    assert record["mode"] == "chat" and record["question"] == QUESTION and record["answer"]
    assert record["image"] == {"path": toy_image, "width": image.width, "height": image.height}
    assert record["checkpoint"] == golden_checkpoint and record["threshold"] == 0.5
    masks = np.stack([rle_to_mask(p["mask"]) for p in record["phrases"]])
    assert masks.shape == (len(record["phrases"]), image.height, image.width)
    assert [p["area"] for p in record["phrases"]] == [int(m.sum()) for m in masks]
    # Printed: the answer with [k: phrase] marks, then one line per phrase with its area.
    first = record["phrases"][0]
    assert f"[1: {first['text']}]" in out
    assert f"  1. {first['text']}: {first['area']} pixels" in out
    assert f"overlay: {tmp_path / 'turn.png'}" in out
    # The overlay is exactly the drawing of the recorded masks.
    overlay = Image.open(tmp_path / "turn.png")
    expected = draw_overlay(image, masks, [p["text"] for p in record["phrases"]])
    assert np.array_equal(np.asarray(overlay), np.asarray(expected))


def test_cli_expression_and_interactive_modes(
    golden_checkpoint, toy_image, tmp_path, monkeypatch, capsys
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--image", toy_image]
    argv += ["--max-new-tokens", "12", "--output-dir", str(tmp_path), "--threshold", "0.4"]
    _run_chat([*argv, "--expression", "the red circle", "--name", "expr"], monkeypatch)
    record = json.loads((tmp_path / "expr.json").read_text())
    assert record["mode"] == "expression" and record["expression"] == "the red circle"
    assert [p["text"] for p in record["phrases"]] == ["the red circle"]
    assert record["threshold"] == 0.4

    stdin = f"{QUESTION}\n/refer the blue square\n/refer \n\nnever read\n"
    _run_chat(argv, monkeypatch, stdin=stdin)
    out = capsys.readouterr().out
    stem = Path(toy_image).stem
    first = json.loads((tmp_path / f"{stem}_1.json").read_text())
    second = json.loads((tmp_path / f"{stem}_2.json").read_text())
    assert first["mode"] == "chat" and first["question"] == QUESTION
    assert second["mode"] == "expression" and second["expression"] == "the blue square"
    assert "chat: the referring expression is empty" in out  # "/refer " asks again
    # The failed turn wrote nothing and the empty line ended the session.
    assert sorted(p.name for p in tmp_path.glob(f"{stem}_*.json")) == [
        f"{stem}_1.json",
        f"{stem}_2.json",
    ]


def test_cli_errors_name_the_problem(golden_checkpoint, tmp_path, monkeypatch) -> None:
    (tmp_path / "notes.png").write_text("text")
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--question", "Hi?"]
    with pytest.raises(SystemExit, match="chat: notes.png is not an image"):
        _run_chat([*argv, "--image", str(tmp_path / "notes.png")], monkeypatch)
    with pytest.raises(SystemExit, match="no such image file"):
        _run_chat([*argv, "--image", str(tmp_path / "none.jpg")], monkeypatch)
    with pytest.raises(SystemExit) as error:  # argparse: threshold out of (0, 1)
        _run_chat([*argv, "--image", "x.png", "--threshold", "1.5"], monkeypatch)
    assert error.value.code == 2
