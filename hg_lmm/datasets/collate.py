"""Batching: the model consumes a list of samples per step, so collation keeps them as a list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from hg_lmm.utils.build import build


def list_collate(batch: Sequence[Any]) -> dict[str, list[Any]]:
    """DataLoader `collate_fn`: the samples as a list, untouched (no stacking: images, captions
    and mask counts all differ in size), under the key mmengine passes to `model.forward`.

    Returns {"data": [sample, ...]}; mmengine calls `model(**batch, mode=...)`.
    """
    return {"data": list(batch)}


def concat_datasets(
    datasets: Sequence[Dataset | dict], *, skip_bad_samples: bool = False
) -> Dataset:
    """Concatenate datasets (e.g. RefCOCO + PNG for training).

    Arguments:
      datasets: built datasets or config dicts (built with xtuner's BUILDER).
      skip_bad_samples: wrap the result in `SkipBadSamples`, so that a sample that cannot be
        decoded (a corrupt image mid-run) is replaced by the next one, with a logged warning and
        a running count, instead of stopping a long training run.
    """
    built = [build(d) for d in datasets]
    if not built:
        raise ValueError("concat_datasets needs at least one dataset")
    dataset = ConcatDataset(built)
    if skip_bad_samples:
        from hg_lmm.datasets.skip import SkipBadSamples

        dataset = SkipBadSamples(dataset)
    return dataset
