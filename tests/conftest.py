"""Shared pytest set-up: offline, deterministic, CPU-only; tiny models built once per session."""

from __future__ import annotations

import os

# Nothing may reach a model hub from the test-suite: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny" / "hg_tiny_llava_toy.py")


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


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> str:
    """The small toy data set (`ToyConfig.small()`), generated once per session."""
    from hg_lmm.testing.toy import ToyConfig, make_toy_data

    root = str(tmp_path_factory.mktemp("toy"))
    make_toy_data(root, ToyConfig.small())
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder for cached tiny LMMs (`hg_lmm.testing` builds them there on first use)."""
    return tmp_path_factory.mktemp("tiny_lmms")


@pytest.fixture(scope="session")
def golden_checkpoint(tmp_path_factory) -> str:
    """The tiny config's model with the RNG-free golden weights in its head (varied masks)."""
    from mmengine.config import Config

    from hg_lmm.testing.golden import golden_state_dict
    from hg_lmm.utils.build import build
    from hg_lmm.utils.checkpoint import load_state, save_checkpoint, trainable_state_dict

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the config caches the tiny LMM below work_dirs/ of the repo
        model = build(Config.fromfile(TINY_CONFIG).model)
    shapes = {k: v.shape for k, v in trainable_state_dict(model).items()}
    load_state(model, golden_state_dict(shapes))
    path = tmp_path_factory.mktemp("ckpt") / "golden.pth"
    save_checkpoint(model, path)
    return str(path)
