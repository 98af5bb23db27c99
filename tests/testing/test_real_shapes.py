"""Random LMMs at the released shapes (the benchmark's models): configs equal the released ones,
folders load through the adapters' builders."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hg_lmm.testing.real_shapes import (
    DEEPSEEK_VL_CONFIGS,
    family,
    llava_1_5_7b_config,
    load_adapter,
    random_lmm_folder,
)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "deepseek_vl")


@pytest.mark.parametrize("name", sorted(DEEPSEEK_VL_CONFIGS))
def test_deepseek_vl_configs_are_the_released_ones(name):
    size = name.rsplit("-", 1)[1]
    with open(os.path.join(FIXTURES, f"deepseek-vl-{size}-chat.config.json")) as f:
        released = json.load(f)
    for key in ("architectures", "model_type", "torch_dtype"):
        released.pop(key)
    assert DEEPSEEK_VL_CONFIGS[name] == released


def test_llava_1_5_7b_has_the_published_size(llava_tokenizer):
    from transformers import LlavaForConditionalGeneration

    config = llava_1_5_7b_config(llava_tokenizer)
    config.text_config.max_position_embeddings = 64  # only the rotary caches depend on it
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e9, 2) == 7.06  # llava-hf/llava-1.5-7b-hf: 7.06B parameters
    assert config.image_token_index == llava_tokenizer.convert_tokens_to_ids("<image>")
    assert config.vision_config.image_size // config.vision_config.patch_size == 24


def test_tiny_folder_loads_through_the_builder(tmp_path):
    folder = random_lmm_folder("tiny-deepseek-vl", tmp_path / "tiny")
    assert random_lmm_folder("tiny-deepseek-vl", tmp_path / "tiny") == folder  # built once
    adapter = load_adapter("tiny-deepseek-vl", folder, torch_dtype="float32")
    assert adapter.dims.num_image_tokens == 16 and not adapter.eager_features
    with pytest.raises(ValueError, match="unknown LMM"):
        family("gpt-2")


@pytest.mark.parametrize(
    "name, dims",
    [
        ("mgm-2b", (18, 8, 2048, 24, 768, 144)),
        ("mgm-7b", (32, 32, 4096, 24, 768, 1024)),
        ("mgm-7b-hd", (32, 32, 4096, 24, 1536, 2048)),
    ],
)
def test_mgm_meta_adapters_have_the_released_dims(name, dims, tmp_path):
    from hg_lmm.testing.real_shapes import meta_adapter

    d = meta_adapter(name=name, tokenizer_dir=tmp_path).dims
    assert (d.num_layers, d.num_heads, d.hidden_size, d.grid, d.image_size) == dims[:5]
    assert d.attn_channels == dims[5] and d.vision_channels == d.hidden_size


def test_tiny_mgm_folder_loads_through_the_builder(tmp_path):
    folder = random_lmm_folder("tiny-mgm", tmp_path / "tiny")
    adapter = load_adapter("tiny-mgm", folder, torch_dtype="float32")
    assert adapter.dims.num_image_tokens == 9 and family("mgm-7b-hd") == "mgm"
