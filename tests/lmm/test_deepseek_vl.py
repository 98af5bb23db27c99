"""Our DeepSeek-VL: released state-dict layout, strict save/load, and the multi-layer features."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from torchvision.transforms import Resize
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from hg_lmm.lmm.deepseek_vl import MultiModalityCausalLM, MultiModalityConfig, register
from hg_lmm.lmm.deepseek_vl.processing import (
    DEEPSEEK_VL_IMAGE_TAG,
    DeepseekVLImageProcessor,
    deepseek_vl_chat_prompt,
    encode_deepseek_vl_prompt,
)
from hg_lmm.testing.tiny_deepseek_vl import (
    randomize_,
    tiny_deepseek_vl,
    tiny_deepseek_vl_config,
)
from tests.lmm._helpers import block_outputs

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "deepseek_vl")
RELEASES = {
    "deepseek_vl_1_3b_chat": "deepseek-vl-1.3b-chat.config.json",
    "deepseek_vl_7b_chat": "deepseek-vl-7b-chat.config.json",
}
STYLES = ["1.3b", "7b"]


def _release_config(name: str) -> MultiModalityConfig:
    with open(os.path.join(FIXTURES, RELEASES[name])) as f:
        return MultiModalityConfig(**json.load(f))


def _shapes(module: torch.nn.Module, prefixes: tuple[str, ...] = ("",)) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items() if k.startswith(prefixes)}


# --- full size, on the meta device ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_full_size_state_dict_matches_release(name):
    with open(os.path.join(FIXTURES, "vision_aligner_keys.json")) as f:
        expected = json.load(f)[name]
    config = _release_config(name)
    # Only the non-persistent rotary caches depend on this; computing them for 16384 positions
    # on CPU would dominate the test.
    config.language_config.max_position_embeddings = 64
    # timm calls .item() while building, so parameters (not buffers) go to the meta device.
    with init_empty_weights(include_buffers=False):
        model = MultiModalityCausalLM(config)
    got = _shapes(model, ("vision_model.", "aligner."))
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}

    assert type(model.language_model) is LlamaForCausalLM
    with init_empty_weights(include_buffers=False):
        llama = LlamaForCausalLM(config.language_config)
    language = {
        k[len("language_model.") :]: v for k, v in _shapes(model, ("language_model.",)).items()
    }
    assert language == _shapes(llama)
    assert set(model.state_dict()) == set(got) | {f"language_model.{k}" for k in language}

    # Shapes of the full-size vision paths, propagated on the meta device (no compute).
    size = config.vision_input_size
    embeds, feats = model.encode_images_with_features(torch.empty(1, 3, size, size, device="meta"))
    assert embeds.shape == (1, 576, config.vision_channels)
    assert feats.shape == (1, 8, 576, config.vision_channels)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_config_derived_sizes(name):
    config = _release_config(name)
    hybrid = name == "deepseek_vl_7b_chat"
    assert config.num_image_tokens == 576 and config.vision_grid == 24
    assert config.vision_input_size == (1024 if hybrid else 384)
    assert config.vision_channels == (4096 if hybrid else 2048)
    low, high = config.feature_layers()
    assert low == (3, 6, 9, 12, 15, 18, 20, 23)
    assert high == ((1, 2, 4, 5, 7, 9, 10, 11) if hybrid else None)


def test_release_config_loads_through_auto_config(tmp_path):
    register()
    shutil.copyfile(
        os.path.join(FIXTURES, RELEASES["deepseek_vl_7b_chat"]), tmp_path / "config.json"
    )
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, MultiModalityConfig)
    assert config.vision_config.cls == "HybridVisionTower"
    assert config.aligner_config.params["projector_type"] == "low_high_hybrid_split_mlp_gelu"
    assert config.language_config.num_hidden_layers == 30


def test_import_hg_lmm_does_not_register_or_import_heavy_deps():
    code = (
        "import sys, hg_lmm, hg_lmm.lmm\n"
        "heavy = ('hg_lmm.lmm.deepseek_vl', 'timm', 'segment_anything')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- tiny models ----------------------------------------------------------------------------


def _tiny(style: str, seed: int = 0, **kwargs) -> MultiModalityCausalLM:
    torch.manual_seed(seed)
    config = tiny_deepseek_vl_config(style, vocab_size=64, **kwargs)
    config._attn_implementation = "eager"  # as the reloaded copies, so outputs compare exactly
    return randomize_(MultiModalityCausalLM(config), seed=seed).eval()


def _images(model: MultiModalityCausalLM, batch: int = 2) -> torch.Tensor:
    size = model.config.vision_input_size
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _inputs(model: MultiModalityCausalLM) -> dict[str, torch.Tensor]:
    """A batch of one sequence: 3 text tokens, the image tokens, 2 text tokens."""
    n = model.config.num_image_tokens
    ids = torch.tensor([[1, 5, 7] + [9] * n + [11, 3]])
    return {
        "input_ids": ids,
        "pixel_values": _images(model, 1)[:, None],
        "images_seq_mask": ids == 9,
        "images_emb_mask": torch.ones(1, 1, n, dtype=torch.bool),
    }


@pytest.mark.parametrize("style", STYLES)
def test_tiny_save_and_reload_is_strict_and_identical(style, tmp_path):
    register()
    model = _tiny(style)
    model.save_pretrained(tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert type(loaded) is MultiModalityCausalLM
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    loaded.eval()
    ref, new = model.state_dict(), loaded.state_dict()
    assert ref.keys() == new.keys()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert loaded.config.language_config._attn_implementation == "eager"
    with torch.no_grad():
        a = model(**_inputs(model)).logits
        b = loaded(**_inputs(loaded), output_attentions=True)
    assert torch.equal(a, b.logits)
    assert b.attentions[0] is not None  # eager attention returns probabilities


@pytest.mark.parametrize("layers", [None, (0, 1), (3, 0, 2)])
def test_tiny_single_tower_multilayer_features(layers):
    kwargs = {} if layers is None else {"feature_layers": layers}
    model = _tiny("1.3b", **kwargs)
    picked = model.config.feature_layers()[0]
    x = _images(model)
    tower = model.vision_model.vision_tower
    with torch.no_grad():
        blocks = block_outputs(tower.blocks, lambda: model.vision_model(x))
        expected = torch.stack([model.aligner(blocks[i]) for i in picked], dim=1)
        feats = model.multilayer_vision_features(x)
        embeds, feats2 = model.encode_images_with_features(x)
        # The decoder's image embeddings: the tower's normed last block through the aligner.
        official = model.aligner(tower.forward_features(x))
    n, c = model.config.num_image_tokens, model.config.vision_channels
    assert feats.shape == (2, len(picked), n, c)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats2, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embeds, official, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.encode_images(x), official, rtol=1e-5, atol=1e-6)


def _sam_project(sam, tokens: torch.Tensor, neck) -> torch.Tensor:
    """Block output [B, h, w, C] -> neck -> bilinear resize -> downsamples -> [B, N, C']."""
    size = sam.settings.downsample_input_size
    x = F.interpolate(neck(tokens.permute(0, 3, 1, 2)), size=(size, size), mode="bilinear")
    return sam.downsamples(x).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("layers", [None, ((0, 1), (3, 2))])
def test_tiny_hybrid_multilayer_features(layers):
    kwargs = {}
    if layers is not None:
        kwargs = {"feature_layers": layers[0], "high_res_feature_layers": layers[1]}
    model = _tiny("7b", **kwargs)
    low_layers, high_layers = model.config.feature_layers()
    vm = model.vision_model
    high_tower, low_tower = vm.vision_tower_high, vm.vision_tower_low
    sam, vit = high_tower.vision_tower, low_tower.vision_tower
    x = _images(model)
    clip_mean = torch.tensor(high_tower.pixel_mean)[:, None, None]
    clip_std = torch.tensor(high_tower.pixel_std)[:, None, None]
    x_high = (x - clip_mean) / clip_std
    x_low = (Resize(low_tower.image_size, antialias=True)(x) - 0.5) / 0.5
    with torch.no_grad():
        hi = block_outputs(sam.blocks, lambda: sam(x_high))
        lo = block_outputs(vit.blocks, lambda: vit.forward_features(x_low))
        high = torch.stack([_sam_project(sam, hi[i], sam.neck) for i in high_layers], dim=1)
        low = torch.stack([lo[i] for i in low_layers], dim=1)
        expected = model.aligner((high, low))
        feats = model.multilayer_vision_features(x)
        embeds, feats2 = model.encode_images_with_features(x)
        # The released forward: last block via `neck` plus alpha * first global block via `neck_hd`.
        first_global = min(i for i in sam.settings.global_attn_indexes)
        official_high = _sam_project(sam, hi[len(sam.blocks) - 1], sam.neck) + (
            _sam_project(sam, hi[first_global], sam.neck_hd) * sam.hd_alpha_downsamples
        )
        official = model.aligner((official_high, vit.forward_features(x_low)))
    n, c = model.config.num_image_tokens, model.config.vision_channels
    assert feats.shape == (2, len(low_layers), n, c)
    assert sam.hd_alpha_downsamples.abs().item() > 0  # the second path is really exercised
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats2, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embeds, official, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.encode_images(x), official, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("style", STYLES)
def test_prepare_inputs_embeds_splices_image_embeddings(style):
    model = _tiny(style)
    inputs = _inputs(model)
    ids, mask = inputs["input_ids"], inputs["images_seq_mask"]
    with torch.no_grad():
        embeds = model.prepare_inputs_embeds(**inputs)
        image = model.encode_images(inputs["pixel_values"][:, 0])
        text = model.get_input_embeddings()(ids)
        out = model(**inputs).logits
        ref = model.language_model(inputs_embeds=embeds).logits
    assert torch.equal(embeds[mask], image[0])
    assert torch.equal(embeds[~mask], text[~mask])
    assert torch.equal(out, ref)
    assert torch.equal(ids, _inputs(model)["input_ids"]), "input_ids must not be modified"
    bad = dict(inputs, images_seq_mask=mask.clone())
    bad["images_seq_mask"][0, 0] = True
    with pytest.raises(ValueError, match="image-token slots"):
        model.prepare_inputs_embeds(**bad)


def test_feature_layers_are_validated():
    with pytest.raises(ValueError, match="vision_feature_layers"):
        _tiny("1.3b", feature_layers=(0, 9)).multilayer_vision_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="pair up"):
        tiny_deepseek_vl_config(
            "7b", vocab_size=8, feature_layers=(0, 1), high_res_feature_layers=(0,)
        ).feature_layers()
    # Released defaults do not fit a 4-block tower: the error says what to set.
    config = tiny_deepseek_vl_config("1.3b", vocab_size=8)
    config.vision_feature_layers = None
    with pytest.raises(ValueError, match="config.vision_feature_layers"):
        config.feature_layers()


@pytest.mark.parametrize("style", STYLES)
def test_tiny_builder_end_to_end(style, tmp_path):
    """The tiny builder's files work together: tokenizer, processor, model (via Auto classes)."""
    model, tokenizer, save_dir = tiny_deepseek_vl(tmp_path, style)
    assert type(model) is MultiModalityCausalLM and not model.training
    processor = DeepseekVLImageProcessor.from_pretrained(save_dir)
    pixel_values, meta = processor(torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8))
    assert pixel_values.shape[-1] == model.config.vision_input_size
    n = model.config.num_image_tokens
    text = deepseek_vl_chat_prompt(DEEPSEEK_VL_IMAGE_TAG + "Where is the red circle?")
    ids = encode_deepseek_vl_prompt(tokenizer, text, n)[None]
    image_id = tokenizer.convert_tokens_to_ids(DEEPSEEK_VL_IMAGE_TAG)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            pixel_values=pixel_values[None, None],
            images_seq_mask=ids == image_id,
            output_attentions=True,
            output_hidden_states=True,
        )
    layers = model.config.language_config.num_hidden_layers
    assert len(out.attentions) == layers and len(out.hidden_states) == layers + 1
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert meta["padded_shape"]["height"] == model.config.vision_input_size
