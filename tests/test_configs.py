"""Every config under configs/ parses with mmengine and holds no absolute or cluster paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.py") if "__pycache__" not in p.parts)
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:\\|[a-z0-9+:]+://)")


def _strings(obj, path=""):
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}[{i}]")


def test_configs_exist():
    assert CONFIGS, f"no configs found under {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_parses_without_absolute_paths(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    bad = [(k, v) for k, v in _strings(cfg.to_dict()) if _ABSOLUTE.match(v)]
    assert not bad, f"{path}: absolute or remote paths {bad}; use paths relative to the repo root"
    assert "work_dir" not in cfg, f"{path}: set work_dir on the CLI (--work-dir), not in the config"


def test_absolute_path_detector():
    assert _ABSOLUTE.match("/Storage/data/coco")
    assert _ABSOLUTE.match("openmmlab:s3://bucket")
    assert not _ABSOLUTE.match("data/coco/annotations")
    assert not _ABSOLUTE.match("deepseek-ai/deepseek-vl-1.3b-chat")


def test_tiny_mgm_config_builds_and_tokenises(tmp_path, toy_root):
    """configs/tiny/hg_tiny_mgm_toy.py: the tiny MGM in place of the tiny LLaVA, with MGM's
    tokenizer and Gemma prompt on every training set (one <image> token per sample)."""
    from mmengine.config import Config

    from hg_lmm.lmm.mgm.adapter import MGMAdapter
    from hg_lmm.utils.build import build

    cfg = Config.fromfile(CONFIG_DIR / "tiny" / "hg_tiny_mgm_toy.py")
    cache = str(tmp_path / "mgm_gemma")
    cfg.model.lmm.cache_dir = cache
    model = build(cfg.model)
    assert isinstance(model.lmm, MGMAdapter)
    for dataset in cfg.train_dataloader.dataset.datasets:
        # The captions are tokenised after the prompt the adapter itself uses (Gemma's).
        assert build(dataset.transform.prompt) == model.lmm.train_prompt
        dataset.transform.tokenizer.cache_dir = cache
        dataset.data_root = str(toy_root)
        sample = build(dataset)[0]
        ids = list(sample["input_ids"])
        assert ids.count(model.lmm.image_token_id) == 1, dataset.type
