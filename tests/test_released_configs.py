"""The sixteen released configs: original file names, the reference recipes, and that each one
builds the right head and a working data pipeline once its LMM is swapped for a tiny one.

Real LMMs and SAM weights are never loaded here: `tiny_overrides` replaces `cfg.model.lmm` with
the matching tiny adapter, SAM with a tiny random SAM, the tokenizer and prompt with the tiny
LMM's, and `data/` with the toy data set; everything else is the released config as shipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "deepseek_vl"
SAM_L = "checkpoints/sam_vit_l_0b3195.pth"


@dataclass(frozen=True)
class Leaf:
    """A released config and the reference facts it must carry."""

    path: str
    head: str  # "hg" (HG head) or "unet_sam" (U-Net+SAM head)
    lmm: str  # "1.3b", "7b" (DeepSeek-VL), "llava", "llava_next_vicuna"/"_mistral", "mgm_*"
    model_path: str
    max_epochs: int
    batch_size: int
    lr: float

    @property
    def id(self) -> str:
        return Path(self.path).stem


DS13, DS7, LLAVA, NEXT_V, NEXT_M = (
    "deepseek-ai/deepseek-vl-1.3b-chat",
    "deepseek-ai/deepseek-vl-7b-chat",
    "llava-hf/llava-1.5-7b-hf",
    "llava-hf/llava-v1.6-vicuna-7b-hf",
    "llava-hf/llava-v1.6-mistral-7b-hf",
)
# HG-LMM's configs: 4 epochs, batch 1, lr 1e-4. F-LMM's: 8 epochs, batch 1, lr 1e-4, except the
# 1.3B model (batch 2, lr 2e-4).
LEAVES = [
    Leaf(
        "deepseek_vl/hg_frozen_deepseek_vl_1_3b_chat_refcoco_png.py", "hg", "1.3b", DS13, 4, 1, 1e-4
    ),
    Leaf("deepseek_vl/hg_frozen_deepseek_vl_7b_chat_refcoco_png.py", "hg", "7b", DS7, 4, 1, 1e-4),
    Leaf("llava/hg_frozen_llava_1_5_vicuna_7b_refcoco_png.py", "hg", "llava", LLAVA, 4, 1, 1e-4),
    Leaf(
        "deepseek_vl/frozen_deepseek_vl_1_3b_chat_unet_sam_l_refcoco_png.py",
        "unet_sam",
        "1.3b",
        DS13,
        8,
        2,
        2e-4,
    ),
    Leaf(
        "deepseek_vl/frozen_deepseek_vl_7b_chat_unet_sam_l_refcoco_png.py",
        "unet_sam",
        "7b",
        DS7,
        8,
        1,
        1e-4,
    ),
    Leaf(
        "llava/frozen_llava_1_5_vicuna_7b_unet_sam_l_refcoco_png.py",
        "unet_sam",
        "llava",
        LLAVA,
        8,
        1,
        1e-4,
    ),
    *(
        Leaf(
            f"llava_next/frozen_llava_next_{d}_7b_unet_sam_l_refcoco_png.py",
            "unet_sam",
            f"llava_next_{d}",
            path,
            8,
            1,
            1e-4,
        )
        for d, path in (("vicuna", NEXT_V), ("mistral", NEXT_M))
    ),
    *(
        Leaf(
            f"llava_next/hg_frozen_llava_next_{d}_7b_refcoco_png.py",
            "hg",
            f"llava_next_{d}",
            path,
            4,
            1,
            1e-4,
        )  # fmt: skip
        for d, path in (("vicuna", NEXT_V), ("mistral", NEXT_M))
    ),
]
# Mini-Gemini: (config stem, leaf lmm, hub id).
MGM = (
    ("gemma_2b", "mgm_gemma_2b", "YanweiLi/MGM-2B"),
    ("vicuna_7b", "mgm_vicuna_7b", "YanweiLi/MGM-7B"),
    ("vicuna_7b_hd", "mgm_vicuna_7b_hd", "YanweiLi/MGM-7B-HD"),
)
MGM_TINY = {"mgm_gemma_2b": "gemma", "mgm_vicuna_7b": "vicuna", "mgm_vicuna_7b_hd": "vicuna_hd"}
LEAVES += [
    *(
        Leaf(f"mgm/frozen_mgm_{s}_unet_sam_l_refcoco_png.py", "unet_sam", lmm, path, 8, 1, 1e-4)
        for s, lmm, path in MGM
    ),
    *(
        Leaf(f"mgm/hg_frozen_mgm_{s}_refcoco_png.py", "hg", lmm, path, 4, 1, 1e-4)
        for s, lmm, path in MGM
    ),
]
LEAF_IDS = [leaf.id for leaf in LEAVES]


def load_leaf(leaf: Leaf):
    from mmengine.config import Config

    return Config.fromfile(str(ROOT / "configs" / leaf.path))


def expected_prompt(leaf: Leaf) -> str:
    """The adapter's own training prompt for the released LMM (its code, the release's dims)."""
    if leaf.lmm == "llava":
        from hg_lmm.lmm.llava import TRAIN_PROMPT

        return TRAIN_PROMPT
    if leaf.lmm.startswith("llava_next_"):
        from hg_lmm.lmm.llava_next import llava_next_train_prompt

        return llava_next_train_prompt(leaf.lmm.removeprefix("llava_next_"))
    if leaf.lmm.startswith("mgm_"):
        from hg_lmm.lmm.mgm import mgm_train_prompt

        return mgm_train_prompt("gemma" if "gemma" in leaf.lmm else "vicuna")
    from hg_lmm.lmm.deepseek_vl.configuration import MultiModalityConfig
    from hg_lmm.lmm.deepseek_vl.processing import deepseek_vl_train_prompt

    name = {"1.3b": "deepseek-vl-1.3b-chat", "7b": "deepseek-vl-7b-chat"}[leaf.lmm]
    release = MultiModalityConfig(**json.loads((FIXTURES / f"{name}.config.json").read_text()))
    return deepseek_vl_train_prompt(release.num_image_tokens)


def _rebase(obj: Any, old: str, new: str) -> Any:
    """Every string starting with `old` (a path prefix) now starts with `new`."""
    if isinstance(obj, str):
        return new + obj[len(old) :] if obj.startswith(old) else obj
    if isinstance(obj, dict):  # ConfigDicts too; their items() give the resolved `type`s
        return {k: _rebase(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rebase(v, old, new) for v in obj]
    return obj


def tiny_overrides(cfg, leaf: Leaf, tiny_dir: Path, toy_root: Path):
    """The released config with a tiny LMM (and tiny SAM), its tokenizer and prompt, toy data."""
    from hg_lmm.testing.tiny_deepseek_vl import (
        tiny_deepseek_vl_adapter,
        tiny_deepseek_vl_tokenizer,
    )
    from hg_lmm.testing.tiny_llava_next import (
        tiny_llava_next_adapter,
        tiny_llava_next_tokenizer,
    )
    from hg_lmm.testing.tiny_mgm import tiny_mgm_adapter, tiny_mgm_tokenizer
    from hg_lmm.testing.tiny_models import tiny_llava_adapter, tiny_llava_tokenizer
    from hg_lmm.testing.tiny_sam import tiny_sam

    if leaf.lmm.startswith("mgm_"):
        variant = MGM_TINY[leaf.lmm]
        cache = str(tiny_dir / leaf.lmm)
        grid = cfg.model.lmm.get("attention_grid", "fine")  # the released reading
        lmm = dict(type=tiny_mgm_adapter, variant=variant, attention_grid=grid, cache_dir=cache)
        tokenizer = dict(type=tiny_mgm_tokenizer, variant=variant, cache_dir=cache)
        prompt = None  # the template does not depend on the model size: keep the config's
    elif leaf.lmm.startswith("llava_next_"):
        decoder = leaf.lmm.removeprefix("llava_next_")
        cache = str(tiny_dir / leaf.lmm)
        grid = cfg.model.lmm.attention_grid  # the released reading, on the tiny model
        lmm = dict(
            type=tiny_llava_next_adapter, decoder=decoder, attention_grid=grid, cache_dir=cache
        )
        tokenizer = dict(type=tiny_llava_next_tokenizer, decoder=decoder, cache_dir=cache)
        prompt = None  # the template does not depend on the model size: keep the config's
    elif leaf.lmm == "llava":
        cache = str(tiny_dir / "llava")
        lmm = dict(type=tiny_llava_adapter, cache_dir=cache)
        tokenizer = dict(type=tiny_llava_tokenizer, cache_dir=cache)
        prompt = None  # LLaVA's prompt does not depend on the model size: keep the config's
    else:
        cache = str(tiny_dir / f"deepseek_vl_{leaf.lmm}")
        lmm = dict(type=tiny_deepseek_vl_adapter, cache_dir=cache, style=leaf.lmm)
        tokenizer = dict(type=tiny_deepseek_vl_tokenizer, cache_dir=cache, style=leaf.lmm)
        # The tiny grid has fewer image tokens than 576: the tiny adapter's own prompt.
        prompt = tiny_deepseek_vl_adapter(cache_dir=cache, style=leaf.lmm).train_prompt
    cfg.model.lmm = lmm
    if leaf.head == "unet_sam":
        cfg.model.head.sam.model = dict(type=tiny_sam)
    datasets = []
    for d in cfg.train_dataloader.dataset.datasets:
        d = _rebase(d, "data/", f"{toy_root}/")
        d["transform"]["tokenizer"] = tokenizer
        if prompt is not None:
            d["transform"]["prompt"] = prompt
        datasets.append(d)
    cfg.train_dataloader.dataset.datasets = datasets
    cfg.train_dataloader.num_workers = 0
    return cfg


# --- the configs as shipped ----------------------------------------------------------------------


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_recipe(leaf):
    from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR

    from hg_lmm.datasets.collate import concat_datasets, list_collate
    from hg_lmm.datasets.layout import png_dataset, refcoco_dataset
    from hg_lmm.datasets.transforms import TokenizePieces
    from hg_lmm.engine.loops import EpochsAsItersTrainLoop
    from hg_lmm.heads.hg import HGHead
    from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead, build_sam
    from hg_lmm.lmm.deepseek_vl.adapter import build_deepseek_vl_adapter
    from hg_lmm.lmm.llava import build_llava_adapter
    from hg_lmm.lmm.llava_next import build_llava_next_adapter
    from hg_lmm.model import GroundingModel
    from hg_lmm.utils.build import build

    cfg = load_leaf(leaf)
    model = cfg.model
    assert model.type is GroundingModel
    builder = build_llava_adapter if leaf.lmm == "llava" else build_deepseek_vl_adapter
    if leaf.lmm.startswith("llava_next_"):
        builder = build_llava_next_adapter
        assert model.lmm.template == leaf.lmm.removeprefix("llava_next_")
        # F-LMM's reading for its U-Net head; the HG head needs the fixed base grid.
        assert model.lmm.attention_grid == ("base" if leaf.head == "hg" else "fine")
    if leaf.lmm.startswith("mgm_"):
        from hg_lmm.lmm.mgm import build_mgm_adapter, mgm_tokenizer

        builder = build_mgm_adapter
        assert model.lmm.template == ("gemma" if "gemma" in leaf.lmm else "vicuna")
        # F-LMM's towers; the HD reading as for LLaVA-NeXT (fine for U-Net, base for HG).
        assert model.lmm.clip_path == "openai/clip-vit-large-patch14-336"
        assert model.lmm.convnext_path == (
            "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
        )
        if leaf.lmm.endswith("_hd"):
            assert model.lmm.attention_grid == ("base" if leaf.head == "hg" else "fine")
        else:
            assert model.lmm.get("attention_grid", "fine") == "fine"
        for d in cfg.train_dataloader.dataset.datasets:
            assert d.transform.tokenizer.type is mgm_tokenizer  # adds <image> as F-LMM does
    assert model.lmm.type is builder
    assert model.lmm.model_path == leaf.model_path
    assert model.lmm.torch_dtype == "bfloat16"
    assert model.loss == dict(loss_mask_weight=1.0, loss_dice_weight=1.0)
    if leaf.head == "hg":
        assert model.head.type is HGHead
    else:
        assert model.head.type is UNetSAMHead
        assert model.head.mask_head.type is UNetMaskHead
        assert model.head.sam.type is SAMRefiner
        sam = model.head.sam.model
        assert (sam.type, sam.variant, sam.checkpoint) == (build_sam, "vit_l", SAM_L)

    # Schedule: AdamW, wd 0.01, 3% linear warm-up then cosine to 0, bf16 AMP, grad-norm clip 1.
    ow = cfg.optim_wrapper
    assert ow.type is AmpOptimWrapper and ow.dtype == "bfloat16"
    assert ow.clip_grad.max_norm == 1.0
    assert ow.optimizer.type is torch.optim.AdamW
    assert ow.optimizer.lr == leaf.lr and ow.optimizer.weight_decay == 0.01
    warm, cosine = cfg.param_scheduler
    e = leaf.max_epochs
    assert warm.type is LinearLR and (warm.begin, warm.end) == (0, pytest.approx(0.03 * e))
    assert cosine.type is CosineAnnealingLR and cosine.eta_min == 0.0
    assert (cosine.begin, cosine.end) == (pytest.approx(0.03 * e), e)
    assert all(s.by_epoch and s.convert_to_iter_based for s in cfg.param_scheduler)
    assert cfg.train_cfg.type is EpochsAsItersTrainLoop and cfg.train_cfg.max_epochs == e
    # No debug values: checkpoints every 500 iterations, as the reference configs save.
    assert cfg.default_hooks.checkpoint.interval == 500

    # Data: PNG + RefCOCO (unc) + RefCOCO+ (unc) + RefCOCOg (umd) train splits, each tokenised
    # with the LMM's own tokenizer and training prompt.
    dl = cfg.train_dataloader
    assert dl.batch_size == leaf.batch_size
    assert dl.collate_fn.type is list_collate and dl.dataset.type is concat_datasets
    png, *refs = dl.dataset.datasets
    assert (png.type, png.data_root, png.split) == (png_dataset, "data/", "train2017")
    assert [(r.type, r.data_root, r.name, r.split) for r in refs] == [
        (refcoco_dataset, "data/", "refcoco", "train"),
        (refcoco_dataset, "data/", "refcoco+", "train"),
        (refcoco_dataset, "data/", "refcocog", "train"),
    ]
    prompt = expected_prompt(leaf)
    for d in dl.dataset.datasets:
        assert d.transform.type is TokenizePieces
        assert d.transform.tokenizer.pretrained_model_name_or_path == leaf.model_path
        assert build(d.transform.prompt) == prompt


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_dumped_config_keeps_the_prompt(leaf, tmp_path):
    """The copy mmengine dumps into the work dir builds the same prompt when loaded again (an
    imported string constant would come back as its dotted name)."""
    from mmengine.config import Config

    from hg_lmm.utils.build import build

    dumped = tmp_path / "dumped.py"
    load_leaf(leaf).dump(str(dumped))
    reloaded = Config.fromfile(str(dumped))
    for d in reloaded.train_dataloader.dataset.datasets:
        assert build(d.transform.prompt) == expected_prompt(leaf)


def test_deepseek_prompt_holds_one_image_of_576_tags():
    prompt = expected_prompt(LEAVES[0])
    assert prompt.count("<image_placeholder>") == 576
    assert prompt.startswith("User: <image_placeholder>")
    assert prompt.endswith("Please give me a description of the image.\n\nAssistant:")


# --- built with a tiny LMM -----------------------------------------------------------------------


@pytest.mark.parametrize("leaf", LEAVES, ids=LEAF_IDS)
def test_builds_with_tiny_lmm(leaf, tiny_dir, toy_root):
    from hg_lmm.heads.hg import HGHead
    from hg_lmm.heads.unet_sam import UNetSAMHead
    from hg_lmm.utils.build import build

    cfg = tiny_overrides(load_leaf(leaf), leaf, tiny_dir, toy_root)
    model = build(cfg.model)
    head_cls = HGHead if leaf.head == "hg" else UNetSAMHead
    assert type(model.head) is head_cls
    dims = model.lmm.dims
    assert model.head.dims == dims and dims.hidden_size == 32  # the tiny LMM's, not 2048/4096
    assert model.head.text_layer_weights.numel() == dims.num_layers
    assert model.head.text_proj.in_features == dims.hidden_size
    # Both runners call init_weights() before training: it must leave the frozen LMM alone.
    frozen = {k: v.clone() for k, v in model.lmm.state_dict().items()}
    model.init_weights()
    assert all(torch.equal(v, frozen[k]) for k, v in model.lmm.state_dict().items())

    # The released data pipeline on the toy set: one sample from each of the four data sets.
    from hg_lmm.datasets.skip import SkipBadSamples

    wrapped = build(cfg.train_dataloader.dataset)
    assert isinstance(wrapped, SkipBadSamples)  # corrupt samples are skipped and counted
    dataset = wrapped.dataset
    assert len(dataset.datasets) == 4
    starts = [0, *dataset.cumulative_sizes[:-1]]
    samples = [dataset[i] for i in starts]
    for s in samples:
        assert s.input_ids.shape == s.mask_ids.shape
        assert int(s.mask_ids.max()) + 1 == len(s.masks)
        assert (s.mask_ids[: s.caption_start] == -1).all()
    model.train()
    losses = model([samples[0]], mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    assert ("sam_loss_mask" in losses) == (leaf.head == "unet_sam")


def test_tiny_overrides_touch_only_lmm_sam_tokenizer_and_paths(tiny_dir, toy_root):
    leaf = LEAVES[3]
    shipped = load_leaf(leaf)
    tiny = tiny_overrides(load_leaf(leaf), leaf, tiny_dir, toy_root)
    assert tiny.model.head.mask_head == shipped.model.head.mask_head
    assert tiny.optim_wrapper == shipped.optim_wrapper
    assert tiny.param_scheduler == shipped.param_scheduler
    for a, b in zip(
        tiny.train_dataloader.dataset.datasets, shipped.train_dataloader.dataset.datasets
    ):
        assert a["type"] is b["type"]
        assert (a.get("name"), a["split"]) == (b.get("name"), b["split"])
        assert os.path.isabs(a["data_root"])
