"""The learning curve drawn as a PNG (`hg_lmm.engine.curves`), from a hand-made curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hg_lmm.engine.curves import main, plot_curve, read_curve

CURVE = {
    "interval": 2,
    "points": [
        {"iter": 2, "loss": 1.5, "loss_mask": 1.0, "loss_dice": 0.5, "lr": 1e-5},
        {"iter": 4, "loss": 1.0, "loss_mask": 0.6, "loss_dice": 0.4, "lr": 2e-5},
        {"iter": 6, "loss": 0.5, "loss_mask": 0.3, "loss_dice": 0.2, "lr": 1e-5},
    ],
}
PURPLE = (148, 103, 189)


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_curve_is_drawn_with_its_loss_terms_and_learning_rate(tmp_path):
    path = tmp_path / "learning_curve.json"
    path.write_text(json.dumps(CURVE))
    out = plot_curve(read_curve(path), tmp_path / "curve.png")
    image = _pixels(out)
    assert image.shape == (550, 700, 3)
    # The learning-rate line is drawn in tab:purple (148, 103, 189); the three loss terms in the
    # default cycle's first three colours.
    for colour in [PURPLE, (31, 119, 180), (255, 127, 14), (44, 160, 44)]:
        assert (np.abs(image.astype(int) - colour).sum(-1) < 30).sum() > 50, colour
    # Without a learning rate (curves written before it was recorded) the lower panel is empty.
    old = {
        "interval": 2,
        "points": [{k: v for k, v in p.items() if k != "lr"} for p in CURVE["points"]],
    }
    bare = _pixels(plot_curve(old, tmp_path / "old.png"))
    assert (np.abs(bare.astype(int) - PURPLE).sum(-1) < 30).sum() == 0


def test_bad_curves_are_named(tmp_path):
    bad = tmp_path / "learning_curve.json"
    bad.write_text('{"points": [{"loss": 1}]}')
    with pytest.raises(ValueError, match="is not a learning curve"):
        read_curve(bad)
    with pytest.raises(ValueError, match="cannot read the learning curve"):
        read_curve(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no point yet"):
        plot_curve({"interval": 10, "points": []}, tmp_path / "x.png")


def test_cli_draws_a_work_dir_and_exits_2_on_a_bad_file(tmp_path, capsys):
    (tmp_path / "learning_curve.json").write_text(json.dumps(CURVE))
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "learning_curve.png").is_file()
    assert main([str(tmp_path / "nothing.json")]) == 2
    assert "cannot read the learning curve" in capsys.readouterr().err
