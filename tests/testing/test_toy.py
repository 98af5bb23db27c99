"""The toy generator: deterministic, small, fast, and in the official formats."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from hg_lmm.datasets.io import rgb_to_id
from hg_lmm.testing.toy import ToyConfig, make_toy_data, toy_paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_seed_same_bytes_other_seed_differs(toy_root, tmp_path):
    tik = time.perf_counter()
    make_toy_data(str(tmp_path / "a"), ToyConfig.small())
    elapsed = time.perf_counter() - tik
    assert _digest(str(tmp_path / "a")) == _digest(toy_root)
    make_toy_data(str(tmp_path / "b"), ToyConfig.small(seed=1))
    other = _digest(str(tmp_path / "b"))
    assert other.keys() == _digest(toy_root).keys()
    assert other != _digest(toy_root)
    assert elapsed < 5.0


def test_small_and_complete_layout(toy_root):
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(toy_root) for f in fs)
    assert total < 2 * 1024 * 1024
    for name, path in toy_paths(toy_root).items():
        assert os.path.exists(path), name
    images = [f for _, _, fs in os.walk(toy_root) for f in fs if f.endswith(".jpg")]
    assert 24 <= len(images) <= 80
    sizes = {
        Image.open(os.path.join(d, f)).size
        for d, _, fs in os.walk(toy_root)
        for f in fs
        if f.endswith(".jpg")
    }
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert all(64 <= min(w, h) and max(w, h) <= 160 for w, h in sizes)


def test_panoptic_pngs_match_segments_info(toy_root):
    paths = toy_paths(toy_root)
    for split in ("train2017", "val2017"):
        with open(paths[f"panoptic_{split}"]) as f:
            panoptic = json.load(f)
        cats = {c["id"]: c for c in panoptic["categories"]}
        assert {c["isthing"] for c in cats.values()} == {0, 1}
        for ann in panoptic["annotations"]:
            png = np.asarray(
                Image.open(os.path.join(paths[f"panoptic_png_{split}"], ann["file_name"])).convert(
                    "RGB"
                )
            )
            ids = rgb_to_id(png)
            listed = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids).tolist()) == set(listed)
            for sid, s in listed.items():
                assert int((ids == sid).sum()) == s["area"]
        with open(paths[f"png_{split}"]) as f:
            narratives = json.load(f)
        assert isinstance(narratives, list) and narratives
        for n in narratives:
            assert isinstance(n["image_id"], str) and n["caption"]
            for seg in n["segments"]:
                assert set(seg) >= {"utterance", "segment_ids", "plural", "noun"}
                assert all(isinstance(s, str) for s in seg["segment_ids"])
                assert seg["plural"] == (len(seg["segment_ids"]) > 1)
    with open(paths["png_train2017"]) as f:
        assert any(s["plural"] for n in json.load(f) for s in n["segments"])


@pytest.mark.parametrize(
    "name, splits",
    [
        ("refcoco", {"train", "val", "testA", "testB"}),
        ("refcoco+", {"train", "val", "testA", "testB"}),
        ("refcocog", {"train", "val", "test"}),
    ],
)
def test_refs_pickle_has_the_fields_mmdet_and_refer_read(toy_root, name, splits):
    paths = toy_paths(toy_root)
    with open(paths[f"{name}_refs"], "rb") as f:
        refs = pickle.load(f)
    with open(paths[f"{name}_instances"]) as f:
        instances = json.load(f)
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    assert {r["split"] for r in refs} == splits
    per_image: dict[int, list[str]] = {}
    for r in refs:
        assert set(r) >= {
            "ref_id",
            "ann_id",
            "image_id",
            "split",
            "sentences",
            "sent_ids",
            "file_name",
            "category_id",
        }
        assert anns[r["ann_id"]]["image_id"] == r["image_id"] in images
        assert [s["sent_id"] for s in r["sentences"]] == r["sent_ids"]
        for s in r["sentences"]:
            assert s["raw"] == s["sent"] and s["tokens"] == s["raw"].split()
        per_image.setdefault(r["image_id"], []).append(r["sentences"][0]["raw"])
        # Each ref's image lives in one split only (the official splits are by image).
    split_of = {}
    for r in refs:
        assert split_of.setdefault(r["image_id"], r["split"]) == r["split"]
    for exprs in per_image.values():
        assert len(exprs) == len(set(exprs)), exprs
    if name == "refcoco+":
        assert not any(w in e for es in per_image.values() for e in es for w in ("left", "right"))


def test_config_validation():
    with pytest.raises(ValueError, match="refcoco_images"):
        ToyConfig(refcoco_images=3)
    with pytest.raises(ValueError, match="min_side"):
        ToyConfig(min_side=200, max_side=100)


def test_cli_writes_the_tree(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "make_toy_data.py"),
            "--out",
            str(out),
            "--seed",
            "3",
            "--png-train",
            "2",
            "--png-val",
            "1",
            "--refcoco-images",
            "6",
            "--gcg-images",
            "1",
            "--reasonseg-images",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    with open(toy_paths(str(out))["png_train2017"]) as f:
        assert len(json.load(f)) == 2
    assert len(os.listdir(toy_paths(str(out))["reasonseg_val"])) == 2
