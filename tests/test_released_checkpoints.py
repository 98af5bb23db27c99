"""Released HG-head checkpoints through the evaluation CLIs' loader (`load_model`): the released
config, its LMM swapped for one at the released dims on the meta device (`meta_adapter`), and a
file saved as the reference saves it (a torch .pth holding a plain state dict)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from hg_lmm.evaluation.runner import load_model
from hg_lmm.testing.golden import golden_state_dict, golden_weight
from hg_lmm.testing.real_shapes import meta_adapter

ROOT = Path(__file__).resolve().parents[1]
HG_FIXTURES = ROOT / "tests" / "fixtures" / "hg_head"


def _released_config(path: str, name: str, tmp_path: Path, monkeypatch) -> str:
    """The released config's path; reading it gives the released config with the meta LMM."""
    from mmengine.config import Config

    file = str(ROOT / "configs" / path)
    cfg = Config.fromfile(file)
    cfg.model.lmm = dict(type=meta_adapter, name=name, tokenizer_dir=str(tmp_path / "tok"))
    original = Config.fromfile
    monkeypatch.setattr(
        Config, "fromfile", staticmethod(lambda f, *a, **k: cfg if f == file else original(f))
    )
    return file


def _reference_file(shapes: dict[str, list[int]], path: Path) -> Path:
    torch.save(golden_state_dict(shapes), path)
    return path


@pytest.mark.parametrize(
    ("config", "name", "fixture"),
    [
        ("deepseek_vl/hg_frozen_deepseek_vl_1_3b_chat_refcoco_png.py", "deepseek-vl-1.3b", "1_3b"),
        ("deepseek_vl/hg_frozen_deepseek_vl_7b_chat_refcoco_png.py", "deepseek-vl-7b", "7b"),
    ],
)
def test_deepseek_vl_reference_key_set_loads_strictly(config, name, fixture, tmp_path, monkeypatch):
    shapes = json.loads((HG_FIXTURES / f"deepseek_vl_{fixture}.json").read_text())
    shapes = shapes["state_dict_shapes"]
    ckpt = _reference_file(shapes, tmp_path / "released.pth")
    model = load_model(_released_config(config, name, tmp_path, monkeypatch), ckpt)
    own = model.state_dict()
    for key, shape in shapes.items():
        if key.startswith("cliplayer."):  # the 7B reference's unused module: ignored
            assert "head." + key not in own
            continue
        assert torch.equal(own["head." + key], golden_weight(key, tuple(shape))), key


def test_llava_reference_layout_is_refused_by_name_with_what_is_known(
    tmp_path, caplog, monkeypatch
):
    record = json.loads((HG_FIXTURES / "llava_1_5_7b_reference_keys.json").read_text())
    shapes = dict(record["state_dict_shapes"])
    shapes["lifg.conv1.weight"] = [128, 4096, 1, 1]  # also a mis-shaped and a missing key
    shapes.pop("text_proj.bias")
    ckpt = _reference_file(shapes, tmp_path / "released.pth")
    config = _released_config(
        "llava/hg_frozen_llava_1_5_vicuna_7b_refcoco_png.py", "llava-1.5-7b", tmp_path, monkeypatch
    )
    with pytest.raises(SystemExit) as error:
        load_model(config, ckpt)
    message = str(error.value)
    assert "Nothing was loaded" in message
    assert "missing from the file (1):\n  head.text_proj.bias" in message
    assert "  ldsi.reassemble_projs.stage4.1.weight\n  ldsi.reassemble_projs.stage4.1.bias" in (
        message
    )
    assert "  lifg.conv1.weight: file (128, 4096, 1, 1), model (256, 4096, 1, 1)" in message
    assert "does not run at its HEAD" in message and "unverified" in message

    # The layout of this head (the reference's minus its stride-2 stage-4 conv) loads, with
    # the same note as a warning.
    ours = {k: v for k, v in record["state_dict_shapes"].items() if "stage4.1" not in k}
    good = _reference_file(ours, tmp_path / "ours.pth")
    with caplog.at_level(logging.WARNING):
        load_model(config, good)
    assert "unverified" in caplog.text
