"""Every reader loads the toy set; bad files and dangling annotations raise named errors."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hg_lmm.datasets import (
    AnnotationError,
    CorruptImageError,
    DanglingAnnotationError,
    DatasetError,
    GranDfGCGDataset,
    GroundingSample,
    MissingFileError,
    PNGDataset,
    ReasonSegDataset,
    SkipBadSamples,
    concat_datasets,
    list_collate,
)
from hg_lmm.datasets.reasonseg import labelme_masks
from hg_lmm.testing.toy import ToyConfig, make_toy_data
from hg_lmm.testing.toy import toy_paths as _toy_paths
from hg_lmm.testing.toy.scenes import COLORS, GRASS_RGB, SHAPES, SKY_RGB


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, str]:
    """The toy set, generated once; tests that corrupt files make their own copy."""
    return make_toy_data(str(tmp_path_factory.mktemp("toy")), ToyConfig.small())


@pytest.fixture
def fresh_toy(tmp_path) -> dict[str, str]:
    """A private toy set (0.1 s) that a test may damage."""
    return make_toy_data(str(tmp_path / "toy"), ToyConfig.small(png_train=3, png_val=1))


def png_dataset(paths: dict[str, str], split: str = "train2017", **kw) -> PNGDataset:
    return PNGDataset(
        json_file=paths[f"png_{split}"],
        panoptic_json_file=paths[f"panoptic_{split}"],
        panoptic_png_dir=paths[f"panoptic_png_{split}"],
        image_dir=paths[f"images_{split}"],
        **kw,
    )


def _mean_rgb(image, mask: torch.Tensor) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)[mask.numpy()].mean(axis=0)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda k: float(np.sum((np.asarray(palette[k]) - rgb) ** 2)))


def assert_words_match_pixels(image, phrase: str, mask: torch.Tensor) -> None:
    """The learnability contract: the colour word of a phrase is the colour under its mask."""
    assert mask.any(), phrase
    words = phrase.lower().replace(".", "").split()
    if not any(w.rstrip("s") in SHAPES for w in words):
        assert "sky" in words or "grass" in words, phrase
        got = _nearest(_mean_rgb(image, mask), {"sky": SKY_RGB, "grass": GRASS_RGB})
        assert got in words, (phrase, got)
        return
    got = _nearest(_mean_rgb(image, mask), COLORS)
    assert got in words, (phrase, got)


# --------------------------------------------------------------------------------------------
# PNG


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_png_loads_every_sample(toy, split):
    ds = png_dataset(toy, split)
    with open(toy[f"png_{split}"]) as f:
        narratives = json.load(f)
    assert len(ds) == len(narratives)
    saw_plural = False
    for i in range(len(ds)):
        s = ds[i]
        assert isinstance(s, GroundingSample) and s.image.mode == "RGB"
        n = s.num_masks
        assert s.masks.dtype == torch.bool and s.masks.shape == (n, s.image.height, s.image.width)
        ids = [p.mask_id for p in s.pieces if p.mask_id >= 0]
        assert ids == list(range(n))
        assert len(s.plural) == len(s.isthing) == n
        segs = narratives[i]["segments"]
        assert [p.text for p in s.pieces] == [g["utterance"] for g in segs]
        grounded = [g for g in segs if g["segment_ids"]]
        for k, g in enumerate(grounded):
            assert s.plural[k] == g["plural"]
            assert s.isthing[k] == (g["utterance"] not in ("the grass", "the sky"))
            assert_words_match_pixels(s.image, g["utterance"], s.masks[k])
        saw_plural |= any(s.plural)
        # Masks of one panoptic image never overlap.
        assert int(s.masks.sum(0).max()) <= 1
    assert saw_plural or split == "val2017"


def test_png_plural_mask_is_union_of_its_segments(toy):
    ds = png_dataset(toy)
    with open(toy["panoptic_train2017"]) as f:
        areas = {
            s["id"]: s["area"] for a in json.load(f)["annotations"] for s in a["segments_info"]
        }
    with open(toy["png_train2017"]) as f:
        narratives = json.load(f)
    checked = 0
    for i, n in enumerate(narratives):
        grounded = [g for g in n["segments"] if g["segment_ids"]]
        for k, g in enumerate(grounded):
            if g["plural"]:
                expected = sum(areas[int(sid)] for sid in g["segment_ids"])
                assert int(ds[i].masks[k].sum()) == expected
                checked += 1
    assert checked > 0


def test_png_dangling_segment_id_in_json(fresh_toy):
    with open(fresh_toy["png_train2017"]) as f:
        narratives = json.load(f)
    seg = next(g for g in narratives[0]["segments"] if g["segment_ids"])
    seg["segment_ids"] = ["424242"]
    with open(fresh_toy["png_train2017"], "w") as f:
        json.dump(narratives, f)
    with pytest.raises(DanglingAnnotationError, match="segment id 424242") as e:
        png_dataset(fresh_toy)[0]
    assert "png_coco_train2017.json" in str(e.value)


def test_png_segment_id_absent_from_panoptic_png(fresh_toy):
    with open(fresh_toy["panoptic_train2017"]) as f:
        panoptic = json.load(f)
    panoptic["annotations"][0]["segments_info"].append(
        {"id": 424242, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1}
    )
    with open(fresh_toy["panoptic_train2017"], "w") as f:
        json.dump(panoptic, f)
    with open(fresh_toy["png_train2017"]) as f:
        narratives = json.load(f)
    next(g for g in narratives[0]["segments"] if g["segment_ids"])["segment_ids"] = ["424242"]
    with open(fresh_toy["png_train2017"], "w") as f:
        json.dump(narratives, f)
    with pytest.raises(DanglingAnnotationError, match="do not occur in the panoptic PNG") as e:
        png_dataset(fresh_toy)[0]
    assert panoptic["annotations"][0]["file_name"] in str(e.value)


def _first_image(paths, split="train2017") -> str:
    with open(paths[f"panoptic_{split}"]) as f:
        name = json.load(f)["images"][0]["file_name"]
    return os.path.join(paths[f"images_{split}"], name)


def test_corrupt_and_missing_images_raise_named_errors(fresh_toy):
    path = _first_image(fresh_toy)
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data[:40])
        f.truncate()
    ds = png_dataset(fresh_toy)
    with pytest.raises(CorruptImageError, match="SkipBadSamples") as e:
        ds[0]
    assert path in str(e.value)
    os.remove(path)
    with pytest.raises(MissingFileError) as e:
        ds[0]
    assert path in str(e.value) and isinstance(e.value, FileNotFoundError)


def test_skip_wrapper_logs_and_counts(fresh_toy, caplog):
    path = _first_image(fresh_toy)
    with open(path, "wb") as f:
        f.write(b"not a jpeg")
    ds = png_dataset(fresh_toy)
    wrapped = concat_datasets([ds], skip_bad_samples=True)  # what the training configs build
    assert isinstance(wrapped, SkipBadSamples)
    with caplog.at_level(logging.WARNING, logger="hg_lmm.datasets.skip"):
        samples = [wrapped[i] for i in range(len(wrapped))]
    assert wrapped.num_skipped == 1 and list(wrapped.skipped) == [0]
    assert samples[0].image_id == ds[1].image_id  # replaced by the next good sample
    records = [r for r in caplog.records if "skipping sample 0" in r.getMessage()]
    assert len(records) == 1 and "1 distinct samples skipped so far" in records[0].getMessage()
    assert "CorruptImageError" in records[0].getMessage()
    # Every sample broken: the wrapper gives up loudly instead of looping.
    with open(fresh_toy["panoptic_train2017"]) as f:
        for im in json.load(f)["images"]:
            with open(os.path.join(fresh_toy["images_train2017"], im["file_name"]), "wb") as g:
                g.write(b"x")
    with pytest.raises(DatasetError, match="consecutive samples"):
        SkipBadSamples(ds, max_tries=3)[1]


class _FourBad(torch.utils.data.Dataset):
    """Ten samples; 2, 3, 6 and 9 fail to load as a corrupt image would."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i in (2, 3, 6, 9):
            raise CorruptImageError(f"cannot decode image img_{i}.jpg")
        return GroundingSample(
            image=None, pieces=[], masks=torch.zeros(0, 1, 1), plural=[], isthing=[], source=str(i)
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_each_bad_sample_is_reported_once_with_a_summary(workers, caplog):
    """4 bad samples over 3 epochs: 4 warnings (not 12, in workers or not) and one summary."""
    from hg_lmm.datasets.report import DataReport, sample_notes

    loader = DataLoader(
        SkipBadSamples(_FourBad()), batch_size=2, num_workers=workers, collate_fn=list_collate
    )
    report = DataReport()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # workers start afresh every epoch, as in training
            for batch in loader:
                for sample in batch["data"]:
                    for note in sample_notes(sample):
                        report.add(note)
    lines = [r.getMessage() for r in caplog.records if "skipping sample" in r.getMessage()]
    assert len(lines) == 4 and all("CorruptImageError: cannot decode image" in m for m in lines)
    assert sorted(report.distinct["skipped_sample"]) == [f"sample {i}" for i in (2, 3, 6, 9)]
    assert report.summary() == (
        "data report of this process: 4 samples could not be loaded and were replaced by the "
        "next good one (15 times in all)"  # index 2 fails twice per epoch (2, then 3)
    )


def test_wrong_files_give_clear_errors(toy, tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        png_dataset({**toy, "png_train2017": str(tmp_path / "nope.json")})
    with pytest.raises(AnnotationError, match="list of narratives"):
        png_dataset({**toy, "png_train2017": toy["panoptic_train2017"]})


def test_concat_and_list_collate(toy):
    ds = concat_datasets([png_dataset(toy), png_dataset(toy, "val2017")])
    assert len(ds) == len(png_dataset(toy)) + len(png_dataset(toy, "val2017"))
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, collate_fn=list_collate)))["data"]
    assert isinstance(batch, list) and len(batch) == 3
    assert all(isinstance(s, GroundingSample) for s in batch)


# --------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg (mmdet)


def refcoco(paths, name="refcoco", split="val", **kw):
    from hg_lmm.datasets import RefCocoDataset

    refs = os.path.basename(paths[f"{name}_refs"])
    return RefCocoDataset(
        data_root=paths["coco"],
        ann_file=f"{name}/instances.json",
        split_file=f"{name}/{refs}",
        image_dir="train2014/",
        split=split,
        **kw,
    )


@pytest.mark.parametrize(
    "name, splits",
    [
        ("refcoco", ["train", "val", "testA", "testB"]),
        ("refcoco+", ["val", "testB"]),
        ("refcocog", ["train", "val", "test"]),
    ],
)
def test_refcoco_groups_expressions_per_image(toy, name, splits):
    pytest.importorskip("mmdet")
    with open(toy[f"{name}_refs"], "rb") as f:
        refs = pickle.load(f)
    for split in splits:
        ds = refcoco(toy, name, split)
        expected = {}
        for r in refs:
            if r["split"] == split:
                expected.setdefault(r["image_id"], set()).add(r["sentences"][0]["raw"])
        assert len(ds) == len(expected)
        for i in range(len(ds)):
            s = ds[i]
            assert {p.text for p in s.pieces} == expected[s.image_id]
            assert [p.mask_id for p in s.pieces] == list(range(s.num_masks))
            assert all(p.period_after for p in s.pieces)
            assert s.masks.shape == (len(s.pieces), s.image.height, s.image.width)
            for p in s.pieces:
                assert_words_match_pixels(s.image, p.text, s.masks[p.mask_id])


def test_refcoco_text_mode_original_keeps_every_expression(toy):
    pytest.importorskip("mmdet")
    first = refcoco(toy, split="train")[0]
    every = refcoco(toy, split="train", text_mode="original")[0]
    assert len(every.pieces) == 2 * len(first.pieces)


def test_refcoco_dangling_ann_id(fresh_toy):
    pytest.importorskip("mmdet")
    with open(fresh_toy["refcoco_refs"], "rb") as f:
        refs = pickle.load(f)
    refs[0]["ann_id"] = 987654
    with open(fresh_toy["refcoco_refs"], "wb") as f:
        pickle.dump(refs, f)
    with pytest.raises(DanglingAnnotationError, match="ann_id 987654") as e:
        refcoco(fresh_toy, split="train")
    assert "refs(unc).p" in str(e.value) and "instances.json" in str(e.value)


def test_refcoco_unknown_split_and_corrupt_image(fresh_toy):
    pytest.importorskip("mmdet")
    with pytest.raises(AnnotationError, match="testA"):
        refcoco(fresh_toy, "refcocog", split="testA")
    ds = refcoco(fresh_toy, split="val")
    with open(ds[0].image_path, "wb") as f:
        f.write(b"\xff\xd8 broken")
    with pytest.raises(CorruptImageError):
        ds[0]


# --------------------------------------------------------------------------------------------
# GranD-f GCG and ReasonSeg (evaluation readers)


@pytest.mark.parametrize("split", ["val", "test"])
def test_grandf_reader(toy, split):
    ds = GranDfGCGDataset(
        caption_json=toy[f"gcg_{split}_caption"],
        mask_json=toy[f"gcg_{split}_mask"],
        image_dir=toy["gcg_images"],
    )
    assert len(ds) == ToyConfig.small().gcg_images
    for i in range(len(ds)):
        s = ds[i]
        assert s.image_path.endswith(f"{s.image_id}.jpg") and s.caption
        assert s.masks.shape == (len(s.labels), s.image.height, s.image.width)
        assert len(s.segmentations) == len(s.labels)
        for label, mask in zip(s.labels, s.masks):
            assert label in s.caption.lower()
            assert_words_match_pixels(s.image, label, mask)


def test_grandf_polygons_and_dangling(fresh_toy):
    with open(fresh_toy["gcg_val_mask"]) as f:
        gt = json.load(f)
    gt["annotations"][0]["segmentation"] = [[1, 1, 20, 1, 20, 20, 1, 20]]
    with open(fresh_toy["gcg_val_mask"], "w") as f:
        json.dump(gt, f)
    kw = dict(
        caption_json=fresh_toy["gcg_val_caption"],
        mask_json=fresh_toy["gcg_val_mask"],
        image_dir=fresh_toy["gcg_images"],
    )
    assert int(GranDfGCGDataset(**kw)[0].masks[0].sum()) == 19 * 19  # pixel centres inside
    gt["annotations"][0]["image_id"] = "sa_nowhere"
    with open(fresh_toy["gcg_val_mask"], "w") as f:
        json.dump(gt, f)
    with pytest.raises(DanglingAnnotationError, match="sa_nowhere"):
        GranDfGCGDataset(**kw)


@pytest.mark.parametrize("split", ["val", "test"])
def test_reasonseg_reader(toy, split):
    ds = ReasonSegDataset(root=toy[f"reasonseg_{split}"])
    assert len(ds) == ToyConfig.small().reasonseg_images
    saw_ignore = False
    for i in range(len(ds)):
        s = ds[i]
        assert s.questions and s.target.shape == (s.image.height, s.image.width)
        assert s.target.any() and not (s.target & s.ignore).any()
        saw_ignore |= bool(s.ignore.any())
        assert s.label_map.dtype == torch.uint8
        assert set(torch.unique(s.label_map).tolist()) <= {0, 1, 255}
        words = " ".join(s.questions).lower()
        assert _nearest(_mean_rgb(s.image, s.target), COLORS) in words
    assert saw_ignore


def test_labelme_painting_order_and_flag():
    big = [[0, 0], [9, 0], [9, 9], [0, 9]]
    small = [[3, 3], [5, 3], [5, 5], [3, 5]]
    shapes = [
        {"label": "target", "points": small},
        {"label": "ignore", "points": big},
        {"label": "flag", "points": big},
    ]
    target, ignore = labelme_masks(shapes, 12, 12, source="t")
    # The larger ignore region is painted first, the small target stays on top of it.
    assert target.sum() == 9 and target[3:6, 3:6].all()
    assert ignore.sum() == 100 - 9 and not ignore[10:].any()


def test_reasonseg_missing_json_and_folder(fresh_toy, tmp_path):
    root = fresh_toy["reasonseg_val"]
    os.remove(sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".json"))[0])
    with pytest.raises(MissingFileError, match="LabelMe json"):
        ReasonSegDataset(root=root)[0]
    with pytest.raises(MissingFileError, match="ReasonSeg folder not found"):
        ReasonSegDataset(root=str(tmp_path / "nope"))


def test_toy_paths_match_generated(toy):
    assert toy == _toy_paths(toy["root"])


def _write(path, data) -> None:
    if isinstance(data, bytes):
        with open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            pickle.dump(data, f)


@pytest.mark.parametrize(
    ("which", "damage", "message"),
    [
        ("instances", "truncate", r"instances.json is not valid json .*truncated"),
        ("instances", b"[1, 2]", r"instances.json is not a COCO instances json"),
        ("refs", "truncate", r"refs\(unc\).p is not a readable pickle .*truncated"),
        ("refs", b"plain text, not a pickle", r"refs\(unc\).p is not a readable pickle"),
        ("refs", {"refs": []}, r"refs\(unc\).p holds a pickled dict, not the list of refs"),
        ("refs", [1, 2], r"refs\(unc\).p: a ref is '1'; every ref needs"),
    ],
)
def test_refcoco_damaged_files_are_named(fresh_toy, which, damage, message):
    pytest.importorskip("mmdet")
    path = fresh_toy[f"refcoco_{which}"]
    if damage == "truncate":
        with open(path, "rb") as f:
            data = f.read()
        damage = data[: len(data) // 2]
    _write(path, damage)
    with pytest.raises(AnnotationError, match=message):
        refcoco(fresh_toy, split="val")


def test_reasonseg_json_without_image_is_named(fresh_toy):
    root = fresh_toy["reasonseg_val"]
    image = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".jpg"))[1]
    os.remove(image)
    with pytest.raises(MissingFileError, match="1 ReasonSeg annotation.* have no image") as e:
        ReasonSegDataset(root=root)
    assert os.path.basename(image)[: -len(".jpg")] + ".json" in str(e.value)


def test_reports_of_several_ranks_add_up():
    from hg_lmm.datasets.report import DataNote, DataReport

    one, two = DataReport(), DataReport()
    for key in ("a", "b", "a"):
        one.add(DataNote("skipped_sample", key, f"bad {key}", logged=True))
    for key in ("b", "c"):
        two.add(DataNote("skipped_sample", key, f"bad {key}", logged=True))
    two.add(DataNote("empty_mask", "p", "empty p", logged=True))
    total = DataReport.merged([one, two])
    assert sorted(total.distinct["skipped_sample"]) == ["a", "b", "c"]  # b met by both: once
    assert total.times == {"skipped_sample": 5, "empty_mask": 1}
    assert total.summary("all 2 processes") == (
        "data report of all 2 processes: 3 samples could not be loaded and were replaced by the "
        "next good one (5 times in all); 1 phrases were dropped because their ground-truth mask "
        "is empty (1 times in all)"
    )
    assert one.times == {"skipped_sample": 3}  # the inputs are left as they were
