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


def concat_datasets(datasets: Sequence[Dataset | dict]) -> ConcatDataset:
    """Concatenate datasets (e.g. RefCOCO + PNG for training).

    Arguments:
      datasets: built datasets or config dicts (built with xtuner's BUILDER).
    """
    built = [build(d) for d in datasets]
    if not built:
        raise ValueError("concat_datasets needs at least one dataset")
    return ConcatDataset(built)
