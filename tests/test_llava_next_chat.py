"""The chat path (answer -> noun phrases -> grounding, and referring segmentation) runs with the
four LLaVA-NeXT and six Mini-Gemini configs, each on its tiny LMM (the demo and the web demo
drive `GroundedChat`)."""

from __future__ import annotations

import pytest
import torch

from hg_lmm.chat import GroundedChat, load_user_image
from tests.test_released_configs import LEAVES, load_leaf, tiny_overrides

NEXT = [leaf for leaf in LEAVES if "llava_next" in leaf.id or "_mgm_" in leaf.id]


@pytest.mark.slow
@pytest.mark.parametrize("leaf", NEXT, ids=[leaf.id for leaf in NEXT])
def test_chat_answers_and_grounds(leaf, tiny_dir, toy_root):
    from hg_lmm.datasets.layout import refcoco_dataset
    from hg_lmm.utils.build import build

    model = build(tiny_overrides(load_leaf(leaf), leaf, tiny_dir, toy_root).model).eval()
    chat = GroundedChat(model=model, max_new_tokens=8)
    image = load_user_image(refcoco_dataset(toy_root, "refcoco", "val")[0].image_path)
    turn = chat.ask(image, "What is in the image?")
    assert turn.answer == model.lmm.answer(image, "What is in the image?", 8).text
    assert turn.masks.shape == (len(turn.phrases), image.height, image.width)
    assert turn.masks.dtype == torch.bool
    referred = chat.refer(image, "the red circle")
    assert referred.masks.shape == (1, image.height, image.width)
