"""The toy scenes written in each official format: PNG (COCO panoptic + narratives), RefCOCO /
RefCOCO+ / RefCOCOg (instances.json + refs pickle), GranD-f GCG (caption + RLE mask json) and
ReasonSeg (image + LabelMe json). Every writer draws from its own random stream and writes at the
paths of `hg_lmm.testing.toy.toy_paths` (the layout of `hg_lmm.datasets.layout`).
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
from PIL import Image

from hg_lmm.datasets.io import id_to_rgb
from hg_lmm.testing.toy.scenes import (
    GRASS_RGB,
    SHAPE_CATEGORY_ID,
    SKY_RGB,
    STUFF_CATEGORIES,
    THING_CATEGORIES,
    ToyConfig,
    ToyScene,
    flat_polygon,
    group_phrase,
    mask_bbox,
    object_groups,
    sample_scene,
)
from hg_lmm.utils.rle import mask_to_rle


def _save_jpeg(arr: np.ndarray, path: str, cfg: ToyConfig) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=cfg.jpeg_quality)


def _write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# --------------------------------------------------------------------------------------------
# PNG (COCO panoptic + narratives)


def _png_segment_factory(present: set[int]):
    """Builds PNG narrative segments; ids of segments absent from the image are dropped."""

    def seg(utterance: str, ids: list[int], plural: bool = False) -> dict:
        ids = [i for i in ids if i in present]
        return {
            "utterance": utterance,
            "segment_ids": [str(i) for i in ids],
            "plural": plural and len(ids) > 1,
            "noun": bool(ids),
        }

    return seg


def write_png_split(
    rng: np.random.Generator, cfg: ToyConfig, paths: dict, split: str, count: int, first_id: int
) -> None:
    images, annotations, narratives = [], [], []
    png_dir = paths[f"panoptic_png_{split}"]
    os.makedirs(png_dir, exist_ok=True)
    for k in range(count):
        image_id = first_id + k
        scene = sample_scene(rng, cfg, num_objects=(1, 3), plural_prob=0.6)
        img, labels = scene.render()
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(img, os.path.join(paths[f"images_{split}"], file_name), cfg)
        # Random, distinct panoptic ids that use all three colour channels.
        n_labels = 2 + len(scene.objects)
        seg_ids: list[int] = []
        while len(seg_ids) < n_labels:
            v = int(rng.integers(1, 2**24))
            if v not in seg_ids:
                seg_ids.append(v)
        id_map = np.asarray(seg_ids, np.int64)[labels]
        Image.fromarray(id_to_rgb(id_map)).save(os.path.join(png_dir, f"{image_id:012d}.png"))
        segments_info = []
        for lab, seg_id in enumerate(seg_ids):
            m = labels == lab
            if not m.any():
                continue
            cat = (
                STUFF_CATEGORIES[lab]["id"]
                if lab < 2
                else SHAPE_CATEGORY_ID[scene.objects[lab - 2].shape]
            )
            segments_info.append(
                {
                    "id": seg_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": mask_bbox(m),
                    "area": int(m.sum()),
                }
            )
        present = {s["id"] for s in segments_info}
        seg = _png_segment_factory(present)
        images.append(
            {"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width}
        )
        annotations.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id:012d}.png",
                "segments_info": segments_info,
            }
        )
        segments = [
            seg(
                str(
                    rng.choice(
                        ["In this image we can see", "In this picture we can see", "We can see"]
                    )
                ),
                [],
            )
        ]
        groups = object_groups(scene)
        for g_idx, group in enumerate(groups):
            if g_idx > 0:
                segments.append(seg("and" if g_idx == len(groups) - 1 else ",", []))
            segments.append(
                seg(
                    group_phrase(scene, group, rng),
                    [seg_ids[2 + i] for i in group],
                    plural=len(group) > 1,
                )
            )
        segments += [
            seg(".", []),
            seg("Below there is", []),
            seg("the grass", [seg_ids[1]]),
            seg("and at the top there is", []),
            seg("the sky", [seg_ids[0]]),
            seg(".", []),
        ]
        caption = " ".join(s["utterance"] for s in segments).replace(" ,", ",").replace(" .", ".")
        narratives.append(
            {"image_id": str(image_id), "annotator_id": 0, "caption": caption, "segments": segments}
        )
    categories = [dict(c, color=[60 * (i + 1), 0, 0]) for i, c in enumerate(THING_CATEGORIES)] + [
        dict(STUFF_CATEGORIES[0], color=list(SKY_RGB)),
        dict(STUFF_CATEGORIES[1], color=list(GRASS_RGB)),
    ]
    _write_json(
        {
            "info": {"description": "HG-LMM toy panoptic set"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        },
        paths[f"panoptic_{split}"],
    )
    _write_json(narratives, paths[f"png_{split}"])


# --------------------------------------------------------------------------------------------
# RefCOCO / RefCOCO+ / RefCOCOg (instances.json + refs(...).p, the lichengunc/refer format)


def _expressions(scene: ToyScene, i: int) -> dict[str, list[str]]:
    """Referring expressions of object i, per data set flavour. Unique within the scene."""
    o = scene.objects[i]
    twins = [j for j, p in enumerate(scene.objects) if (p.shape, p.color) == (o.shape, o.color)]
    if len(twins) == 1:
        base = f"{o.color} {o.shape}"
        where = ""
    else:
        base = f"{o.size} {o.color} {o.shape}"
        rank = sorted(twins, key=lambda j: scene.objects[j].cx).index(i)
        where = " on the left" if rank == 0 else " on the right"
    place = "in the sky" if o.cy < scene.horizon else "on the grass"
    return {
        "refcoco": [f"the {base}{where}", base],
        "refcoco+": [f"the {base}", base],
        "refcocog": [f"a {base} {place}", f"the {base} that is {place}"],
    }


def write_refcoco(rng: np.random.Generator, cfg: ToyConfig, paths: dict, first_id: int) -> None:
    images, anns = [], []
    refs: dict[str, list[dict]] = {"refcoco": [], "refcoco+": [], "refcocog": []}
    unc_splits = ("train", "train", "train", "val", "testA", "testB")
    umd_splits = ("train", "train", "val", "test")
    ann_id, ref_id, sent_id = 10_000, 0, 0
    for k in range(cfg.refcoco_images):
        image_id = first_id + k
        # Twins come in two sizes only, so "the big red circle" stays unique without location
        # words (RefCOCO+).
        scene = sample_scene(rng, cfg, num_objects=(2, 4), plural_prob=0.4, max_plural=2)
        img, labels = scene.render()
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        _save_jpeg(img, os.path.join(paths["images_train2014"], file_name), cfg)
        images.append(
            {"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width}
        )
        for i, obj in enumerate(scene.objects):
            m = labels == 2 + i
            ann_id += 1
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": SHAPE_CATEGORY_ID[obj.shape],
                    "segmentation": [flat_polygon(obj)],
                    "area": int(m.sum()),
                    "bbox": mask_bbox(m),
                    "iscrowd": 0,
                }
            )
            for name, sents in _expressions(scene, i).items():
                split = (
                    umd_splits[k % len(umd_splits)]
                    if name == "refcocog"
                    else unc_splits[k % len(unc_splits)]
                )
                sentences = []
                for s in sents:
                    sentences.append({"tokens": s.split(), "raw": s, "sent_id": sent_id, "sent": s})
                    sent_id += 1
                refs[name].append(
                    {
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                        "ann_id": ann_id,
                        "ref_id": ref_id,
                        "image_id": image_id,
                        "split": split,
                        "sentences": sentences,
                        "category_id": SHAPE_CATEGORY_ID[obj.shape],
                    }
                )
                ref_id += 1
    categories = [{k: c[k] for k in ("id", "name", "supercategory")} for c in THING_CATEGORIES]
    instances = {
        "info": {"description": "HG-LMM toy RefCOCO"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    for name in refs:
        _write_json(instances, paths[f"{name}_instances"])
        # Protocol 2, as the original (Python 2) refs pickles.
        with open(paths[f"{name}_refs"], "wb") as f:
            pickle.dump(refs[name], f, protocol=2)


# --------------------------------------------------------------------------------------------
# GranD-f GCG ground truth (COCO-style caption json + mask json with RLE)


def write_gcg(rng: np.random.Generator, cfg: ToyConfig, paths: dict) -> None:
    ann_id = 0
    for s_idx, split in enumerate(("val", "test")):
        images, caps, masks = [], [], []
        for k in range(cfg.gcg_images):
            image_id = f"sa_{100_000 * (s_idx + 1) + k}"
            scene = sample_scene(rng, cfg, num_objects=(1, 3), plural_prob=0.3)
            img, labels = scene.render()
            _save_jpeg(img, os.path.join(paths["gcg_images"], f"{image_id}.jpg"), cfg)
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{image_id}.jpg",
                    "height": scene.height,
                    "width": scene.width,
                }
            )
            phrases, phrase_masks = [], []
            for group in object_groups(scene):
                phrases.append(group_phrase(scene, group, rng))
                phrase_masks.append(np.isin(labels, [2 + i for i in group]))
            things = " and ".join(phrases)
            verb = "are" if len(phrases) > 1 or phrases[0].split()[0] != "a" else "is"
            phrases += ["the grass", "the sky"]
            phrase_masks += [labels == 1, labels == 0]
            caption = f"{things[0].upper()}{things[1:]} {verb} in front of the grass and the sky."
            caps.append(
                {"id": len(caps) + 1, "image_id": image_id, "caption": caption, "labels": phrases}
            )
            for m in phrase_masks:
                rle = mask_to_rle(m)
                ann_id += 1
                masks.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": 1,
                        "segmentation": rle,
                        "area": int(m.sum()),
                        "bbox": mask_bbox(m),
                        "iscrowd": 0,
                    }
                )
        info = {"description": f"HG-LMM toy GranD-f {split}"}
        _write_json(
            {"info": info, "images": images, "annotations": caps}, paths[f"gcg_{split}_caption"]
        )
        _write_json(
            {
                "info": info,
                "images": images,
                "annotations": masks,
                "categories": [{"id": 1, "name": "object"}],
            },
            paths[f"gcg_{split}_mask"],
        )


# --------------------------------------------------------------------------------------------
# ReasonSeg (LISA: image + LabelMe json with "target" / "ignore" polygons and the questions)

_PROPERTY = {"circle": "is round", "square": "has four corners", "triangle": "has three corners"}


def write_reasonseg(rng: np.random.Generator, cfg: ToyConfig, paths: dict) -> None:
    for split in ("val", "test"):
        out_dir = paths[f"reasonseg_{split}"]
        for k in range(cfg.reasonseg_images):
            while True:
                scene = sample_scene(rng, cfg, num_objects=(2, 3), plural_prob=0.0)
                if len(scene.objects) >= 2:
                    break
            img, _ = scene.render()
            name = f"toy_{split}_{k:04d}"
            _save_jpeg(img, os.path.join(out_dir, f"{name}.jpg"), cfg)
            target = int(rng.integers(len(scene.objects)))
            o = scene.objects[target]
            is_sentence = k % 2 == 0
            if is_sentence:
                text = [
                    f"What object in this image is {o.color} and {_PROPERTY[o.shape]}?",
                    f"Find the {o.color} thing that {_PROPERTY[o.shape]}.",
                ]
            else:
                text = [f"the {o.color} {o.shape}"]
            shapes = [
                {
                    "label": "target",
                    "points": [list(p) for p in o.polygon],
                    "group_id": None,
                    "shape_type": "polygon",
                    "flags": {},
                }
            ]
            if k % 2 == 1:
                # Mark another shape as ambiguous: it is neither target nor background in eval.
                other = scene.objects[(target + 1) % len(scene.objects)]
                shapes.append(
                    {
                        "label": "ignore",
                        "points": [list(p) for p in other.polygon],
                        "group_id": None,
                        "shape_type": "polygon",
                        "flags": {},
                    }
                )
            _write_json(
                {
                    "version": "4.5.6",
                    "flags": {},
                    "shapes": shapes,
                    "imagePath": f"{name}.jpg",
                    "imageData": None,
                    "imageHeight": scene.height,
                    "imageWidth": scene.width,
                    "text": text,
                    "is_sentence": is_sentence,
                },
                os.path.join(out_dir, f"{name}.json"),
            )
