"""--save-vis N on the RefCOCO, PNG and ReasonSeg CLIs: the first N samples of each dataset as
prediction-vs-ground-truth overlays, the same files whatever the number of processes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.evaluation.conftest import MAX_NEW_TOKENS, TINY_CONFIG, run_cli


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_refcoco_overlays_show_the_models_prediction(
    toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    from hg_lmm.datasets.layout import refcoco_dataset
    from hg_lmm.evaluation.runner import load_model, make_tokenize
    from hg_lmm.utils.overlay import compare_overlay

    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root, "--concat"]
    argv += ["--splits", "refcoco_val", "--work-dir", str(tmp_path), "--save-vis", "2"]
    run_cli("refcoco", argv, monkeypatch)
    folder = tmp_path / "vis" / "refcoco_val"
    assert _names(folder) == ["00000.png", "00001.png"]

    # Drawn independently: the model's prediction of sample 0 and its ground truth.
    model = load_model(TINY_CONFIG, golden_checkpoint)
    sample = refcoco_dataset(toy_root, "refcoco", "val")[0]
    pred = model([make_tokenize(model)(sample)], mode="predict")[0]["masks"]
    expected = compare_overlay(
        sample.image, pred, sample.masks, sample.phrases, title=sample.source
    )
    assert np.array_equal(_pixels(folder / "00000.png"), np.asarray(expected))


def test_png_and_reasonseg_overlays(toy_root, golden_checkpoint, tmp_path, monkeypatch) -> None:
    common = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    run_cli("png", [*common, "--work-dir", str(tmp_path), "--save-vis", "1"], monkeypatch)
    assert _names(tmp_path / "vis" / "png_val") == ["00000.png"]
    argv = [*common, *MAX_NEW_TOKENS, "--split", "val", "test", "--work-dir", str(tmp_path)]
    run_cli("reasonseg", [*argv, "--save-vis", "3", "--limit", "2"], monkeypatch)
    for split in ("val", "test"):  # at most --limit samples are scored, so drawn
        folder = tmp_path / "vis" / f"reasonseg_{split}"
        assert _names(folder) == ["00000.png", "00001.png"]
        assert Image.open(folder / "00000.png").width >= 1024  # two panels of >= 512 px


def test_no_overlays_without_the_flag_and_a_negative_count_is_refused(
    toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    argv += ["--work-dir", str(tmp_path), "--limit", "1"]
    run_cli("png", argv, monkeypatch)
    assert not (tmp_path / "vis").exists()
    with pytest.raises(SystemExit) as error:
        run_cli("png", [*argv, "--save-vis", "-1"], monkeypatch)
    assert error.value.code == 2


@pytest.mark.slow
def test_two_ranks_draw_the_same_files(
    toy_root, golden_checkpoint, two_rank_runs, tmp_path, monkeypatch
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root, "--concat"]
    argv += ["--splits", "refcoco_val", "--work-dir", str(tmp_path), "--save-vis", "2"]
    run_cli("refcoco", argv, monkeypatch)
    one = tmp_path / "vis" / "refcoco_val"
    two = two_rank_runs("refcoco_concat") / "vis" / "refcoco_val"  # rank 0 drew 0, rank 1 drew 1
    assert _names(one) == _names(two) == ["00000.png", "00001.png"]
    for name in _names(one):
        assert np.array_equal(_pixels(one / name), _pixels(two / name))
