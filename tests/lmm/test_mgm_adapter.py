"""MGM adapter on the tiny models: captured features equal the eager reference path, batching
equals one by one, `answer` works, and the strict loader takes the towers from their own repos
when the MGM folder lacks them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hg_lmm.lmm.mgm import MGMAdapter, MGMImageProcessor
from hg_lmm.lmm.mgm.loading import load_mgm
from hg_lmm.testing.tiny_mgm import VARIANTS, tiny_mgm


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    variant = request.param
    return (variant, *tiny_mgm(tmp_path_factory.mktemp(f"mgm_{variant}"), variant=variant))


def _adapter(tiny, grid: str = "fine", eager: bool = False) -> MGMAdapter:
    variant, model, tok, _ = tiny
    return MGMAdapter(
        lmm=model,
        tokenizer=tok,
        processor=MGMImageProcessor(image_size=model.config.image_size_aux),
        template=VARIANTS[variant][0],
        attention_grid=grid,
        eager_features=eager,
    )


def _sample(adapter, h: int, w: int, seed: int = 0) -> dict:
    tok = adapter.tokenizer
    ids = tok(adapter.train_prompt).input_ids
    mids = [-1] * len(ids)
    for k, text in enumerate(("the red circle", "grass")):
        piece = tok.encode(text, add_special_tokens=False)
        ids, mids = ids + piece, mids + [k] * len(piece)
    image = Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))
    return {"input_ids": torch.tensor(ids), "mask_ids": torch.tensor(mids), "image": image}


@pytest.mark.parametrize("grid", ["fine", "base"])
def test_captured_features_equal_eager_reference_and_batching(tiny, grid):
    variant = tiny[0]
    if grid == "base" and variant != "vicuna_hd":
        pytest.skip("attention_grid only changes the HD reading")
    fast, ref = _adapter(tiny, grid), _adapter(tiny, grid, eager=True)
    samples = [_sample(fast, 30, 50, 0), _sample(fast, 41, 23, 1)]
    batched = fast.extract_batch(samples)
    g, hd = fast.dims.grid, variant == "vicuna_hd"
    side = 2 * g if hd and grid == "fine" else g
    for sample, got in zip(samples, batched):
        want = ref.extract(sample)
        L, H = fast.dims.num_layers, fast.dims.num_heads
        assert got.attn.shape == ((2 if hd else 1) * L, H, len(got.mask_ids), side, side)
        assert got.vision.shape == (8, g * g, fast.dims.hidden_size)
        assert got.pixel_values.shape == (3, fast.dims.image_size, fast.dims.image_size)
        torch.testing.assert_close(got.attn, want.attn, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.hidden, want.hidden, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.vision, want.vision, atol=1e-5, rtol=1e-5)
        assert got.meta == want.meta


def test_answer_records_the_answer_tokens(tiny):
    adapter = _adapter(tiny)
    sample = _sample(adapter, 30, 50)
    out = adapter.answer(sample["image"], "What is in the image?", max_new_tokens=4)
    t = len(out.token_ids)
    assert 0 < t <= 4 and out.features.hidden.shape == (adapter.dims.num_layers, t, 32)
    assert out.features.attn.shape[2] == t
    ref = _adapter(tiny, eager=True).answer(sample["image"], "What is in the image?", 4)
    assert torch.equal(ref.token_ids, out.token_ids)
    torch.testing.assert_close(out.features.attn, ref.features.attn, atol=1e-5, rtol=0)


def test_image_token_is_added_like_flmm(tiny):
    _, model, tok, _ = tiny
    # The released tokenizers have no <image>; it becomes the next id, past the vocabulary.
    assert tok.convert_tokens_to_ids("<image>") == model.config.vocab_size


def test_loader_takes_the_towers_from_their_repos(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    variant, model, _, path = tiny
    if variant != "vicuna":
        pytest.skip("one variant is enough for the loading path")
    folder = tmp_path / "mgm"
    folder.mkdir()
    for f in path.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    state = load_file(str(path / "model.safetensors"))
    towers = ("model.vision_tower.", "model.vision_tower_aux.")
    save_file({k: v for k, v in state.items() if not k.startswith(towers)},
              str(folder / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(ValueError, match="clip_path="):
        load_mgm(folder, torch_dtype=torch.float32)
    clip = tmp_path / "clip"
    model.model.vision_tower.vision_tower.save_pretrained(clip)
    aux = model.model.vision_tower_aux
    open_clip = {f"visual.trunk.stem.{k}": v for k, v in aux.vision_stem.state_dict().items()}
    open_clip.update({f"visual.trunk.stages.{k}": v for k, v in aux.vision_stages.state_dict().items()})  # fmt: skip  # noqa: E501
    open_clip["text.token_embedding.weight"] = torch.zeros(2, 2)  # the text tower is ignored
    (tmp_path / "convnext").mkdir()
    torch.save(open_clip, tmp_path / "convnext" / "open_clip_pytorch_model.bin")
    loaded = load_mgm(folder, clip_path=clip, convnext_path=tmp_path / "convnext",
                      torch_dtype=torch.float32)  # fmt: skip
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_hg_head_trains_on_every_variant(tiny):
    from hg_lmm.heads.hg import HGHead
    from hg_lmm.model import GroundingModel

    adapter = _adapter(tiny, grid="base")  # the HG configs' reading (HD: the 24x24 grid)
    model = GroundingModel(lmm=adapter, head=dict(type=HGHead))
    sample = _sample(adapter, 30, 50)
    masks = torch.zeros(2, 30, 50, dtype=torch.bool)
    masks[0, 5:20, 10:30], masks[1, 20:, :] = True, True
    sample = dict(sample, masks=masks)
    frozen = {k: v.clone() for k, v in model.lmm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    totals = []
    for _ in range(6):
        losses = model([sample], mode="loss")
        total = losses["loss_mask"] + losses["loss_dice"]
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(float(total))
    assert all(np.isfinite(totals)) and totals[-1] < totals[0]
    assert all(torch.equal(v, frozen[k]) for k, v in model.lmm.state_dict().items())
