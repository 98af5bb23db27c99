"""Evaluation that shares each image's frozen work: the same numbers as the unshared path (which
is the path of before), fewer vision passes, and whole images dealt to the ranks."""

from __future__ import annotations

import argparse

import pytest
import torch

from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.evaluation.benchmarks import png_batch, refseg_batch
from hg_lmm.evaluation.mask_metrics import MaskRecord
from hg_lmm.evaluation.runner import EvalRunner, _batches, default_batch_size
from tests.evaluation.conftest import TINY_CONFIG, read_results, run_cli

# --- the CLI on the toy set ---------------------------------------------------------------------


def _vision_images(monkeypatch) -> list[int]:
    """Records how many images each vision pass of the tiny LLaVA encodes."""
    from hg_lmm.lmm.llava import LlavaAdapter

    seen: list[int] = []
    encode = LlavaAdapter.encode_images

    def counted(self, pixel_values):
        seen.append(len(pixel_values))
        return encode(self, pixel_values)

    monkeypatch.setattr(LlavaAdapter, "encode_images", counted)
    return seen


@pytest.mark.parametrize("concat", [False, True])
def test_shared_paths_give_the_unshared_numbers(
    concat, toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    """--no-share (the path of before), the default (per image) and --share-splits (RefCOCO and
    RefCOCO+ together) give exactly the same metrics and counts on the toy val splits, and
    encode each image once per expression, once per split, and once in all."""
    from hg_lmm.evaluation.benchmarks import refcoco_eval_dataset

    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root, "--val"]
    argv += ["--concat"] * concat
    results, images = {}, {}
    for mode, extra in [
        ("no_share", ["--no-share"]),
        ("share", []),
        ("splits", ["--share-splits"]),
    ]:
        seen = _vision_images(monkeypatch)
        run_cli("refcoco", [*argv, *extra, "--work-dir", str(tmp_path / mode)], monkeypatch)
        results[mode], images[mode] = read_results(tmp_path / mode, "refcoco"), sum(seen)
        monkeypatch.undo()
    assert results["share"]["metrics"] == results["no_share"]["metrics"]  # exactly
    assert results["splits"]["metrics"] == results["no_share"]["metrics"]
    assert (
        results["share"]["counts"] == results["no_share"]["counts"] == results["splits"]["counts"]
    )
    assert (results["no_share"]["share"], results["share"]["share"]) == (False, True)
    assert results["splits"]["share_splits"] is True

    splits = [s for s in results["share"]["metrics"]]
    datasets = [refcoco_eval_dataset(toy_root, s) for s in splits]
    expressions = sum(d[i].num_masks for d in datasets for i in range(len(d)))
    per_split = sum(len(d) for d in datasets)
    unique = len({d.image_key(i) for d in datasets for i in range(len(d))})
    assert unique < per_split  # RefCOCO and RefCOCO+ share their images
    assert images["no_share"] == (per_split if concat else expressions)
    assert (images["share"], images["splits"]) == (per_split, unique)


def test_png_batches_give_the_numbers_of_one_at_a_time(
    toy_root, golden_checkpoint, tmp_path, monkeypatch
) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    for size in ("1", "4"):
        run_cli(
            "png", [*argv, "--batch-size", size, "--work-dir", str(tmp_path / size)], monkeypatch
        )
    one, four = read_results(tmp_path / "1", "png"), read_results(tmp_path / "4", "png")
    assert (one["batch_size"], four["batch_size"]) == (1, 4)
    assert one["counts"] == four["counts"]
    for name, value in one["metrics"]["png_val"].items():
        assert four["metrics"]["png_val"][name] == pytest.approx(value, abs=1e-9), name


def test_share_splits_needs_sharing(toy_root, golden_checkpoint, tmp_path, monkeypatch) -> None:
    argv = [TINY_CONFIG, "--checkpoint", golden_checkpoint, "--data-root", toy_root]
    with pytest.raises(SystemExit):
        run_cli("refcoco", [*argv, "--share-splits", "--no-share"], monkeypatch)


# --- grouping, batching and sharding --------------------------------------------------------


def _runner(tmp_path, rank=0, world=1) -> EvalRunner:
    class Ranked(EvalRunner):
        rank = property(lambda self: rank)
        world_size = property(lambda self: world)

    args = argparse.Namespace(data_root="x", work_dir=str(tmp_path), limit=None, num_workers=0)
    return Ranked(args, "unit", load=False)


def test_ranks_get_whole_groups(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    groups = ["a", "b", "a", "c", "b", "d", "a"]
    shards = [_runner(tmp_path, r, 2).shard(len(groups), groups) for r in range(2)]
    assert shards == [[0, 2, 6, 3], [1, 4, 5]]  # groups a, c to rank 0; b, d to rank 1
    assert sorted(shards[0] + shards[1]) == list(range(7))
    assert _runner(tmp_path, 1, 3).shard(7) == [1, 4]  # ungrouped: as before
    assert _runner(tmp_path).shard(3, groups) == [0, 2, 1]  # --limit keeps the first samples


def test_batches_hold_whole_groups() -> None:
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    assert list(_batches(range(7), groups, 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(_batches(range(7), groups, 1)) == [[0, 1], [2], [3, 4, 5], [6]]
    assert list(_batches(range(4), None, 3)) == [[0, 1, 2], [3]]


def test_run_batches_returns_index_order_and_counts(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    runner, seen = _runner(tmp_path), []

    def step(indices, samples):
        seen.append(list(indices))
        return [f"{i}:{s}" for i, s in zip(indices, samples)]

    out = runner.run_batches("letters", list("abcde"), step, batch_size=2, groups=list("xyxzy"))
    assert seen == [[0, 2], [1, 4], [3]]
    assert out == ["0:a", "1:b", "2:c", "3:d", "4:e"]
    assert runner.counts["letters"] == {"samples": 5, "records": 5, "per_rank": [5]}
    with pytest.raises(RuntimeError, match="one per sample"):
        runner.run_batches("bad", list("ab"), lambda i, s: [], batch_size=2)


def test_run_together_groups_across_datasets(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    runner, seen = _runner(tmp_path), []

    def step(keys, samples):
        seen.append(keys)
        return [f"{name}{i}={s}" for (name, i), s in zip(keys, samples)]

    datasets = {"r": ["x", "y"], "r+": ["y", "x", "z"]}
    groups = {"r": ["img1", "img2"], "r+": ["img2", "img1", "img3"]}
    out = runner.run_together(datasets, step, groups=groups)
    assert seen == [[("r", 0), ("r+", 1)], [("r", 1), ("r+", 0)], [("r+", 2)]]
    assert out == {"r": ["r0=x", "r1=y"], "r+": ["r+0=y", "r+1=x", "r+2=z"]}
    assert runner.counts["r+"] == {"samples": 3, "records": 3, "per_rank": [3]}


def test_default_batch_size() -> None:
    assert default_batch_size("cuda") == 16 and default_batch_size("cpu") is None


# --- scoring functions ----------------------------------------------------------------------


class _Model:
    """Predicts the first row of every mask; records how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def predict_group(self, samples, batch_size=None):
        self.calls.append(("group", len(samples)))
        return self._out(samples)

    def __call__(self, samples, mode="predict"):
        self.calls.append(("predict", len(samples)))
        return self._out(samples)

    @staticmethod
    def _out(samples):
        out = []
        for s in samples:
            masks = torch.zeros_like(s.masks)
            masks[:, 0, :] = True
            out.append({"masks": masks, "logits": masks.float()})
        return out


def _sample(path: str, n: int) -> GroundingSample:
    masks = torch.zeros(n, 4, 5, dtype=torch.bool)
    masks[:, :2] = True
    return GroundingSample(
        image=None,
        pieces=[Piece(f"thing {k}", k, period_after=True) for k in range(n)],
        masks=masks,
        plural=[False] * n,
        isthing=[True] * n,
        source=path,
        image_path=path,
    )


def test_refseg_batch_shares_per_image_across_samples() -> None:
    samples = [_sample("a.jpg", 2), _sample("b.jpg", 1), _sample("a.jpg", 3)]
    model = _Model()
    out = refseg_batch(model, [0, 1, 2], samples, tokenize=lambda s: s, concat=False)
    assert model.calls == [("group", 5), ("group", 1)]  # image a: 2 + 3 expressions at once
    assert [len(r) for r in out] == [2, 1, 3]
    assert out[2][2] == MaskRecord("2/2", 5, 10)
    model = _Model()
    again = refseg_batch(model, [0, 1, 2], samples, tokenize=lambda s: s, concat=False,
                         share=False, batch_size=2)  # fmt: skip
    assert model.calls == [("predict", 2), ("predict", 1), ("predict", 2), ("predict", 1)]
    assert again == out


def test_png_batch_groups_narratives_of_one_image() -> None:
    samples = [_sample("a.jpg", 1), _sample("b.jpg", 2), _sample("a.jpg", 1), _sample("c.jpg", 1)]
    model = _Model()
    out = png_batch(model, [0, 1, 2, 3], samples, batch_size=4)
    assert model.calls == [("group", 2), ("predict", 2)]  # b and c, each alone on its image
    model = _Model()
    assert png_batch(model, [0, 1, 2, 3], samples, share=False) == out
    assert model.calls == [("predict", 1)] * 4
