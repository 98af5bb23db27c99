"""Prompt + pieces -> token ids and per-token mask ids, with the tiny LLaVA / DeepSeek-VL
tokenizers (sentencepiece-style and byte-level BPE)."""

from __future__ import annotations

import pytest
import torch

from hg_lmm.datasets import (
    EmptyPieceError,
    Piece,
    PNGDataset,
    TokenizePieces,
    encode_pieces,
)
from hg_lmm.testing.tiny_models import tiny_tokenizer
from hg_lmm.testing.toy import ToyConfig, make_toy_data

PROMPTS = {
    "llava": "USER: <image>\nPlease give me a description of the image. ASSISTANT:",
    "deepseek_vl": "User: "
    + "<image_placeholder>" * 576
    + "Please give me a description of the image.\n\nAssistant:",
}
IMAGE_TOKEN = {"llava": "<image>", "deepseek_vl": "<image_placeholder>"}
IMAGE_TOKENS_IN_PROMPT = {"llava": 1, "deepseek_vl": 576}


@pytest.fixture(scope="module", params=["llava", "deepseek_vl"])
def kind_tok(request, tmp_path_factory):
    kind = request.param
    return kind, tiny_tokenizer(kind, tmp_path_factory.mktemp(f"tok_{kind}"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_data(str(tmp_path_factory.mktemp("toy_tok")), ToyConfig.small())


def _check_alignment(tok, sample) -> None:
    ids, mids = sample.input_ids, sample.mask_ids
    assert ids.dtype == mids.dtype == torch.long and ids.shape == mids.shape
    p = sample.caption_start
    assert (mids[:p] == -1).all() and ids[0].item() == tok.bos_token_id
    for piece in sample.pieces:
        if piece.mask_id < 0:
            continue
        sel = ids[mids == piece.mask_id]
        # Exactly the piece's own encoding, and it decodes back to the phrase text.
        assert sel.tolist() == tok.encode(piece.text, add_special_tokens=False)
        assert tok.decode(sel).strip() == piece.text.strip()
    assert set(mids[p:].tolist()) - {-1} == set(range(sample.num_masks))
    # Nothing but the prompt and the pieces: the caption tokens are the pieces, in order.
    expected = [t for pc in sample.pieces for t in tok.encode(pc.text, add_special_tokens=False)]
    period = tok.encode(".", add_special_tokens=False)[-1]
    caption = ids[p:].tolist()
    if any(pc.period_after for pc in sample.pieces):
        caption = [t for t in caption if t != period]
        expected = [t for t in expected if t != period]
    assert caption == expected


def test_png_pieces_line_up_with_phrases(kind_tok, toy):
    kind, tok = kind_tok
    transform = TokenizePieces(tokenizer=tok, prompt=PROMPTS[kind])
    ds = PNGDataset(
        json_file=toy["png_train2017"],
        panoptic_json_file=toy["panoptic_train2017"],
        panoptic_png_dir=toy["panoptic_png_train2017"],
        image_dir=toy["images_train2017"],
        transform=transform,
    )
    for i in range(len(ds)):
        s = ds[i]
        assert s.caption_start == len(tok.encode(PROMPTS[kind]))
        image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN[kind])
        in_prompt = s.input_ids[: s.caption_start]
        assert int((in_prompt == image_id).sum()) == IMAGE_TOKENS_IN_PROMPT[kind]
        _check_alignment(tok, s)


def test_refcoco_style_period_after_each_expression(kind_tok):
    kind, tok = kind_tok
    pieces = [Piece("the big blue square on the left", 0, True), Piece("red circle", 1, True)]
    ids, mids, p = encode_pieces(tok, PROMPTS[kind], pieces, source="unit")
    period = tok.encode(".", add_special_tokens=False)[-1]
    n0 = len(tok.encode(pieces[0].text, add_special_tokens=False))
    n1 = len(tok.encode(pieces[1].text, add_special_tokens=False))
    assert mids[p:].tolist() == [0] * n0 + [-1] + [1] * n1 + [-1]
    assert ids[p + n0].item() == period and ids[-1].item() == period
    assert tok.decode(ids[p:][mids[p:] == 0]).strip() == pieces[0].text


def test_prompt_ids_may_be_passed_pre_encoded(kind_tok):
    kind, tok = kind_tok
    pieces = [Piece("We can see", -1), Piece("a red circle", 0)]
    a = encode_pieces(tok, PROMPTS[kind], pieces)
    b = encode_pieces(tok, tok.encode(PROMPTS[kind]), pieces)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_empty_masked_piece_raises_and_empty_plain_piece_is_harmless(kind_tok):
    kind, tok = kind_tok
    with pytest.raises(EmptyPieceError, match="toy.json narrative #3"):
        encode_pieces(tok, PROMPTS[kind], [Piece("", 0)], source="toy.json narrative #3")
    ids, mids, p = encode_pieces(tok, PROMPTS[kind], [Piece("", -1), Piece("the sky", 0)])
    assert tok.decode(ids[p:]).strip() == "the sky" and (mids[p:] == 0).all()


# --- the training policy for phrases that cannot be learnt from ----------------------------------


def _sample_with_bad_phrases():
    from hg_lmm.datasets import GroundingSample

    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # "the red circle": fine
    masks[2, 2:] = True  # "" encodes to nothing; mask 1 ("the sky") is empty
    pieces = [Piece("the red circle", 0), Piece(" and ", -1), Piece("the sky", 1), Piece("", 2)]
    return GroundingSample(
        image=None,
        pieces=pieces,
        masks=masks,
        plural=[False, True, False],
        isthing=[True, False, True],
        source="toy.json narrative #5",
    )


def test_ungroundable_phrases_are_dropped_not_the_image(kind_tok, caplog):
    from hg_lmm.datasets.report import sample_notes

    kind, tok = kind_tok
    sample = _sample_with_bad_phrases()
    with caplog.at_level("WARNING", logger="hg_lmm.datasets.transforms"):
        out = TokenizePieces(tokenizer=tok, prompt=PROMPTS[kind])(sample)
    assert out.num_masks == 1 and torch.equal(out.masks[0], sample.masks[0])
    assert [(p.text, p.mask_id) for p in out.pieces] == [
        ("the red circle", 0), (" and ", -1), ("the sky", -1), ("", -1),
    ]  # fmt: skip
    assert (out.plural, out.isthing) == ([False], [True])
    _check_alignment(tok, out)
    notes = sample_notes(out)
    assert [(n.kind, n.key) for n in notes] == [
        ("empty_mask", "toy.json narrative #5, mask 1"),
        ("dropped_phrase", "toy.json narrative #5, mask 2"),
    ]
    assert all(n.logged for n in notes)  # read outside a DataLoader worker: logged here, once
    assert len([r for r in caplog.records if "dropped phrase" in r.getMessage()]) == 2
    assert sample_notes(sample) == []  # the input sample is left as it was


def test_a_sample_without_any_groundable_phrase_is_an_error(kind_tok):
    from hg_lmm.datasets import AnnotationError, GroundingSample

    kind, tok = kind_tok
    empty = GroundingSample(
        image=None,
        pieces=[Piece("the sky", 0)],
        masks=torch.zeros(1, 4, 4, dtype=torch.bool),
        plural=[False],
        isthing=[False],
        source="refs(unc).p image 9",
    )
    with pytest.raises(AnnotationError, match="refs\\(unc\\).p image 9: no phrase left"):
        TokenizePieces(tokenizer=tok, prompt=PROMPTS[kind])(empty)
    # Evaluation keeps every phrase: an empty phrase is an error there, not a silent drop.
    keep_all = TokenizePieces(tokenizer=tok, prompt=PROMPTS[kind], drop_ungroundable=False)
    assert keep_all(empty).num_masks == 1
    with pytest.raises(EmptyPieceError):
        keep_all(_sample_with_bad_phrases())


def test_prompt_may_be_a_config_dict_of_the_lmms_builder(kind_tok):
    """What the released configs hold: a dict that builds the LMM's training prompt."""
    from hg_lmm.lmm.deepseek_vl.processing import deepseek_vl_train_prompt
    from hg_lmm.lmm.llava import llava_train_prompt

    kind, tok = kind_tok
    cfg = {
        "llava": dict(type=llava_train_prompt),
        "deepseek_vl": dict(type=deepseek_vl_train_prompt, num_image_tokens=576),
    }[kind]
    built = TokenizePieces(tokenizer=tok, prompt=cfg)
    assert built.prompt == PROMPTS[kind]
    assert built.prompt_ids == TokenizePieces(tokenizer=tok, prompt=PROMPTS[kind]).prompt_ids
    with pytest.raises(TypeError, match="prompt as a string"):
        TokenizePieces(tokenizer=tok, prompt=576)
