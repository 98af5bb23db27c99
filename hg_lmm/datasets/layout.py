"""Where each dataset's files sit below a data root: the one home of the layout of data/README.md.

The configs build their datasets with the functions below (`type=png_dataset`), the eval CLIs
read the benchmarks through them (`hg_lmm.evaluation.benchmarks`) and the toy generator
(`hg_lmm.testing.toy`) writes its files at these paths, so a renamed file changes here only.

    coco/annotations/png_coco_{split}.json, panoptic_{split}.json, panoptic_{split}/  PNG
    coco/{split}/                                        PNG images (train2017, val2017)
    coco/{refcoco,refcoco+,refcocog}/instances.json, refs(unc|umd).p                  RefCOCO
    coco/train2014/                                      RefCOCO images
    GCG/GranDf/annotations/val_test/{split}_gcg_coco_{caption,mask}_gt.json         GranD-f
    GCG/GranDf_HA_images/val_test/                       GranD-f images
    reason_seg/ReasonSeg/{split}/                        ReasonSeg images + LabelMe json

Every builder takes keyword overrides: a path passed explicitly replaces the layout's (e.g.
`--cfg-options train_dataloader.dataset.datasets.0.ann_file=...`), any other keyword goes to the
dataset class (`transform=`, `text_mode=`...).
"""

from __future__ import annotations

import os
from typing import Any

from hg_lmm.datasets.grandf import GranDfGCGDataset
from hg_lmm.datasets.png import PNGDataset
from hg_lmm.datasets.reasonseg import ReasonSegDataset
from hg_lmm.datasets.refcoco import RefCocoDataset

# RefCOCO-family data sets and the split of the refs file each one ships (lichengunc/refer).
REFCOCO_SPLIT_BY: dict[str, str] = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
GCG_SPLITS = ("val", "test")


def png_files(data_root: str, split: str) -> dict[str, str]:
    """`PNGDataset`'s files for `split` ("train2017" or "val2017") below `data_root`."""
    ann = os.path.join(data_root, "coco", "annotations")
    return {
        "json_file": os.path.join(ann, f"png_coco_{split}.json"),
        "panoptic_json_file": os.path.join(ann, f"panoptic_{split}.json"),
        "panoptic_png_dir": os.path.join(ann, f"panoptic_{split}"),
        "image_dir": os.path.join(data_root, "coco", split),
    }


def refcoco_files(data_root: str, name: str) -> dict[str, str]:
    """`RefCocoDataset`'s files of `name` ("refcoco", "refcoco+", "refcocog"): its `data_root`
    (the coco folder) and the paths relative to it, as mmdet takes them."""
    if name not in REFCOCO_SPLIT_BY:
        raise KeyError(
            f"unknown RefCOCO data set {name!r}; expected one of {list(REFCOCO_SPLIT_BY)}"
        )
    return {
        "data_root": os.path.join(data_root, "coco") + os.sep,
        "ann_file": f"{name}/instances.json",
        "split_file": f"{name}/refs({REFCOCO_SPLIT_BY[name]}).p",
        "image_dir": "train2014/",
    }


def gcg_files(data_root: str, split: str) -> dict[str, str]:
    """`GranDfGCGDataset`'s files for `split` ("val" or "test") below `data_root`."""
    if split not in GCG_SPLITS:
        raise ValueError(f"GCG split must be 'val' or 'test', got {split!r}")
    ann = os.path.join(data_root, "GCG", "GranDf", "annotations", "val_test")
    return {
        "caption_json": os.path.join(ann, f"{split}_gcg_coco_caption_gt.json"),
        "mask_json": os.path.join(ann, f"{split}_gcg_coco_mask_gt.json"),
        "image_dir": os.path.join(data_root, "GCG", "GranDf_HA_images", "val_test"),
    }


def reasonseg_dir(data_root: str, split: str) -> str:
    """LISA's ReasonSeg folder of `split` ("train", "val", "test") below `data_root`."""
    return os.path.join(data_root, "reason_seg", "ReasonSeg", split)


def png_dataset(data_root: str, split: str, **kwargs: Any) -> PNGDataset:
    """PNG narratives of `split` ("train2017" or "val2017")."""
    return PNGDataset(**{**png_files(data_root, split), **kwargs})


def refcoco_dataset(data_root: str, name: str, split: str, **kwargs: Any) -> RefCocoDataset:
    """One split ("train", "val", "testA", "testB"; RefCOCOg: "train", "val", "test") of a
    RefCOCO-family data set `name`, one sample per image."""
    return RefCocoDataset(**{**refcoco_files(data_root, name), "split": split, **kwargs})


def gcg_dataset(data_root: str, split: str, **kwargs: Any) -> GranDfGCGDataset:
    """GranD-f GCG ground truth of `split` ("val" or "test")."""
    return GranDfGCGDataset(**{**gcg_files(data_root, split), **kwargs})


def reasonseg_dataset(data_root: str, split: str, **kwargs: Any) -> ReasonSegDataset:
    """LISA's ReasonSeg images and targets of `split`."""
    return ReasonSegDataset(**{"root": reasonseg_dir(data_root, split), **kwargs})


__all__ = [
    "GCG_SPLITS",
    "REFCOCO_SPLIT_BY",
    "gcg_dataset",
    "gcg_files",
    "png_dataset",
    "png_files",
    "reasonseg_dataset",
    "reasonseg_dir",
    "refcoco_dataset",
    "refcoco_files",
]
