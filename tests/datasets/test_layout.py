"""The data layout: the documented tree, explicit overrides, and the builders the configs use."""

from __future__ import annotations

import pytest

from hg_lmm.datasets import layout
from hg_lmm.datasets.png import PNGDataset
from hg_lmm.datasets.refcoco import RefCocoDataset


def test_paths_are_the_documented_tree():
    assert layout.png_files("data/", "train2017") == {
        "json_file": "data/coco/annotations/png_coco_train2017.json",
        "panoptic_json_file": "data/coco/annotations/panoptic_train2017.json",
        "panoptic_png_dir": "data/coco/annotations/panoptic_train2017",
        "image_dir": "data/coco/train2017",
    }
    assert layout.refcoco_files("data/", "refcocog") == {
        "data_root": "data/coco/",
        "ann_file": "refcocog/instances.json",
        "split_file": "refcocog/refs(umd).p",
        "image_dir": "train2014/",
    }
    assert layout.refcoco_files("data", "refcoco+")["split_file"] == "refcoco+/refs(unc).p"
    assert layout.gcg_files("data", "test") == {
        "caption_json": "data/GCG/GranDf/annotations/val_test/test_gcg_coco_caption_gt.json",
        "mask_json": "data/GCG/GranDf/annotations/val_test/test_gcg_coco_mask_gt.json",
        "image_dir": "data/GCG/GranDf_HA_images/val_test",
    }
    assert layout.reasonseg_dir("data", "val") == "data/reason_seg/ReasonSeg/val"


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="refcocoh"):
        layout.refcoco_files("data", "refcocoh")
    with pytest.raises(ValueError, match="'val' or 'test'"):
        layout.gcg_files("data", "train")


def test_builders_read_the_toy_tree_and_take_overrides(toy_root):
    png = layout.png_dataset(toy_root, "val2017")
    assert isinstance(png, PNGDataset) and len(png) > 0
    assert png.json_file == layout.png_files(toy_root, "val2017")["json_file"]
    refs = layout.refcoco_dataset(toy_root, "refcoco", "val", text_mode="original")
    assert isinstance(refs, RefCocoDataset) and refs.split == "val" and len(refs) > 0
    # An explicit file replaces the layout's (what --cfg-options ...ann_file=... does).
    with pytest.raises(Exception, match="missing.json"):
        layout.refcoco_dataset(toy_root, "refcoco", "train", ann_file="refcoco/missing.json")
    assert len(layout.gcg_dataset(toy_root, "val")) > 0
    assert len(layout.reasonseg_dataset(toy_root, "test")) > 0
