"""Shared pytest set-up: offline, deterministic, CPU-only; tiny models built once per session."""

from __future__ import annotations

import os

# Nothing may reach a model hub from the test-suite: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """(model, tokenizer, save_dir) of a tiny random LLaVA, loaded via from_pretrained."""
    from hg_lmm.testing.tiny_models import tiny_llava

    return tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def llava_tokenizer(tiny_llava):
    return tiny_llava[1]


@pytest.fixture(scope="session")
def deepseek_tokenizer(tmp_path_factory):
    from hg_lmm.testing.tiny_models import tiny_tokenizer

    return tiny_tokenizer("deepseek_vl", tmp_path_factory.mktemp("tiny_ds_tok"))
