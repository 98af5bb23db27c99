"""A RefCOCO-like evaluation workload, for the evaluation items of scripts/benchmark.py.

K images, each with a number of referring expressions drawn around the real splits' mean (RefCOCO
val: 3811 expressions over 1500 images), each expression 5 to 15 caption tokens, as
`GroundingSample`s in the layout `RefCocoDataset` returns (untokenized, one per image). Two
splits are drawn on the same images, as RefCOCO and RefCOCO+ share theirs. Everything is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from hg_lmm.datasets.sample import GroundingSample, Piece

# (images, expressions) of the eight RES benchmarks, one expression per object as mmdet's
# RefCocoDataset reads them (text_mode="select_first"): the splits' sizes in lichengunc/refer
# (RefCOCO and RefCOCO+: unc; RefCOCOg: umd). RefCOCO and RefCOCO+ share their images.
RES_SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "refcoco_val": (1500, 3811),
    "refcoco_testA": (750, 1975),
    "refcoco_testB": (750, 1810),
    "refcoco+_val": (1500, 3805),
    "refcoco+_testA": (750, 1975),
    "refcoco+_testB": (750, 1798),
    "refcocog_val": (1300, 2573),
    "refcocog_test": (2600, 5023),
}

_WORDS = (
    "the man woman person left right red blue green white black small big tall short chair table "
    "cup dog cat car bus giraffe zebra horse bike near far front back middle second first top "
    "bottom sitting standing with on in of a shirt hat umbrella plate pizza donut bear elephant"
).split()


def refs_per_image(num_images: int, mean: float, seed: int = 0) -> list[int]:
    """Expressions per image: 1 + Poisson(mean - 1) per image (seeded), then nudged one at a
    time (never below 1) until they sum to round(mean * num_images)."""
    rng = np.random.default_rng(seed)
    counts = [1 + int(c) for c in rng.poisson(max(mean - 1.0, 0.0), size=num_images)]
    target = max(num_images, round(mean * num_images))
    while sum(counts) != target:
        if sum(counts) < target:
            counts[int(np.argmin(counts))] += 1
        else:
            counts[int(np.argmax(counts))] -= 1
    return counts


def _expression(tokenizer, rng: np.random.Generator, tokens: int) -> str:
    """Words from `_WORDS` until the text encodes to at least `tokens` tokens."""
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < tokens:
        words.append(str(rng.choice(_WORDS)))
    return " ".join(words)


def res_workload(
    tokenizer,
    *,
    num_images: int,
    mean_refs: float,
    image_hw: tuple[int, int] = (480, 640),
    caption_tokens: tuple[int, int] = (5, 15),
    splits: Sequence[str] = ("refcoco", "refcoco+"),
    seed: int = 0,
) -> dict[str, list[GroundingSample]]:
    """Per split, one `GroundingSample` per image (the same K images and files in every split),
    with its own expressions (`refs_per_image` of `mean_refs`, a seed per split) of
    `caption_tokens` (inclusive range) tokens each, and rectangular masks.

    Returns split -> K samples, image k at `image_path` "workload/<k>.jpg" in every split.
    """
    rng = np.random.default_rng(seed)
    h, w = image_hw
    images = [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for _ in range(num_images)
    ]
    out: dict[str, list[GroundingSample]] = {}
    for s, split in enumerate(splits):
        counts = refs_per_image(num_images, mean_refs, seed=seed + 1 + s)
        samples = []
        for k, (image, n) in enumerate(zip(images, counts)):
            lengths = rng.integers(caption_tokens[0], caption_tokens[1] + 1, size=n)
            texts = [_expression(tokenizer, rng, int(t)) for t in lengths]
            masks = torch.zeros(n, h, w, dtype=torch.bool)
            for j in range(n):
                top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                masks[j, top : top + h // 3, left : left + w // 3] = True
            samples.append(
                GroundingSample(
                    image=image,
                    pieces=[Piece(t, j, period_after=True) for j, t in enumerate(texts)],
                    masks=masks,
                    plural=[False] * n,
                    isthing=[True] * n,
                    source=f"workload {split} image {k}",
                    image_id=k,
                    image_path=f"workload/{k}.jpg",
                )
            )
        out[split] = samples
    return out


__all__ = ["RES_SPLIT_SIZES", "refs_per_image", "res_workload"]
