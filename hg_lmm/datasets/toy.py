"""A tiny synthetic data set in the official on-disk formats, for tests, demos and CPU smoke runs.

Each image shows coloured shapes (circle / square / triangle in red / green / blue / yellow, small
or big) over two stuff regions, "sky" on top and "grass" below, on a plain or noisy background.
The colour and shape words of every phrase determine its mask, so a head can learn the task.

`make_toy_data(out_dir, ToyConfig(seed=0))` writes, deterministically from the seed, the same tree
as the real data (data/README.md), below `out_dir`:

    coco/annotations/panoptic_{train,val}2017.json + panoptic_{train,val}2017/*.png
    coco/annotations/png_coco_{train,val}2017.json
    coco/{train,val}2017/*.jpg
    coco/refcoco/{instances.json, refs(unc).p}     splits train / val / testA / testB
    coco/refcoco+/{instances.json, refs(unc).p}    same images, no location words
    coco/refcocog/{instances.json, refs(umd).p}    splits train / val / test
    coco/train2014/*.jpg
    GCG/GranDf/annotations/val_test/{val,test}_gcg_coco_{caption,mask}_gt.json
    GCG/GranDf_HA_images/val_test/*.jpg
    reason_seg/ReasonSeg/{val,test}/*.jpg + LabelMe *.json

`toy_paths(out_dir)` returns the named paths of that tree.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from hg_lmm.datasets.io import id_to_rgb

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
# Stuff colours are pale / dull so that they never read as one of the shape colours.
SKY_RGB = (185, 215, 240)
GRASS_RGB = (150, 160, 110)

THING_CATEGORIES = [
    {"id": i + 1, "name": s, "supercategory": "shape", "isthing": 1} for i, s in enumerate(SHAPES)
]
STUFF_CATEGORIES = [
    {"id": 101, "name": "sky", "supercategory": "background", "isthing": 0},
    {"id": 102, "name": "grass", "supercategory": "background", "isthing": 0},
]
_SHAPE_CAT = {c["name"]: c["id"] for c in THING_CATEGORIES}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
# Side of a shape as a fraction of the short image side.
_SIDE_FRACTION = {"small": (0.16, 0.22), "big": (0.28, 0.36)}


@dataclass(frozen=True)
class ToyConfig:
    """Size knobs of the toy set (numbers of images per split) and its seed.

    The defaults are the built-in data set of the main job (`make demo`): enough images for a
    tiny model to learn the shapes in a few CPU minutes. Tests use `ToyConfig.small()`.
    """

    seed: int = 0
    png_train: int = 120
    png_val: int = 12
    refcoco_images: int = 240
    gcg_images: int = 4
    reasonseg_images: int = 4
    min_side: int = 64
    max_side: int = 160
    noise_prob: float = 0.5
    jpeg_quality: int = 90

    @classmethod
    def small(cls, **overrides: int) -> ToyConfig:
        """A few dozen images: every format and split present, generated and read in seconds."""
        sizes = dict(png_train=12, png_val=6, refcoco_images=12)
        return cls(**{**sizes, **overrides})

    def __post_init__(self) -> None:
        if self.refcoco_images < 6:
            raise ValueError(
                f"refcoco_images={self.refcoco_images}: need at least 6 so that every RefCOCO "
                "split (train, val, testA, testB) gets an image"
            )
        if not 32 <= self.min_side <= self.max_side:
            raise ValueError(
                f"need 32 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )
        for name in ("png_train", "png_val", "gcg_images", "reasonseg_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class ToyObject:
    shape: str
    color: str
    size: str
    polygon: list[tuple[float, float]]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive pixel box)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass
class ToyScene:
    width: int
    height: int
    horizon: int
    noisy: bool
    noise_seed: int
    objects: list[ToyObject] = field(default_factory=list)

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (image [h, w, 3] uint8, labels [h, w] uint8).

        labels: 0 = sky, 1 = grass, 2 + i = object i. Image and labels are filled by the same PIL
        polygon rasteriser, so masks and pixels agree exactly.
        """
        h, w = self.height, self.width
        img = np.empty((h, w, 3), np.float32)
        img[: self.horizon] = SKY_RGB
        img[self.horizon :] = GRASS_RGB
        if self.noisy:
            img += np.random.default_rng(self.noise_seed).normal(0.0, 10.0, img.shape)
        image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        labels_arr = np.zeros((h, w), np.uint8)
        labels_arr[self.horizon :] = 1
        labels = Image.fromarray(labels_arr)
        draw_img, draw_lab = ImageDraw.Draw(image), ImageDraw.Draw(labels)
        for i, obj in enumerate(self.objects):
            draw_img.polygon(obj.polygon, fill=COLORS[obj.color])
            draw_lab.polygon(obj.polygon, fill=2 + i)
        return np.asarray(image), np.asarray(labels)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "circle":
        n = 24
        return [
            (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))
            for k in range(n)
        ]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def _place(
    rng: np.random.Generator, scene: ToyScene, shape: str, color: str, size: str
) -> ToyObject | None:
    """Put a shape where it overlaps no other one (rejection sampling); None if it never fits."""
    short = min(scene.width, scene.height)
    lo, hi = _SIDE_FRACTION[size]
    r = max(4.0, float(rng.uniform(lo, hi)) * short / 2)
    for _ in range(60):
        cx = float(rng.uniform(r + 1, scene.width - r - 2))
        cy = float(rng.uniform(r + 1, scene.height - r - 2))
        box = (
            int(cx - r) - 1,
            int(cy - r) - 1,
            int(math.ceil(cx + r)) + 2,
            int(math.ceil(cy + r)) + 2,
        )
        if all(
            box[2] <= o.box[0] or o.box[2] <= box[0] or box[3] <= o.box[1] or o.box[3] <= box[1]
            for o in scene.objects
        ):
            return ToyObject(shape, color, size, _polygon(shape, cx, cy, r), box)
    return None


def sample_scene(
    rng: np.random.Generator,
    cfg: ToyConfig,
    *,
    num_objects: tuple[int, int] = (2, 4),
    plural_prob: float = 0.0,
    max_plural: int = 3,
) -> ToyScene:
    """A random scene in which objects share (shape, colour) only inside one optional group.

    With probability `plural_prob` one (shape, colour) pair appears 2..max_plural times, in
    alternating sizes (small, big, small), so that a group of two is told apart by size.
    """
    aspect = float(rng.choice([0.6, 0.75, 1.0, 1.33, 1.6]))  # w / h: portrait and landscape
    long_side = int(rng.integers(max(cfg.min_side, 80), cfg.max_side + 1))
    if aspect >= 1:
        w, h = long_side, max(cfg.min_side, int(round(long_side / aspect)))
    else:
        h, w = long_side, max(cfg.min_side, int(round(long_side * aspect)))
    scene = ToyScene(
        width=w,
        height=h,
        horizon=int(h * rng.uniform(0.35, 0.6)),
        noisy=bool(rng.random() < cfg.noise_prob),
        noise_seed=int(rng.integers(2**31)),
    )
    wanted: list[tuple[str, str, str]] = []
    if rng.random() < plural_prob:
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        count = int(rng.integers(2, max_plural + 1))
        wanted += [(shape, color, SIZES[k % 2]) for k in range(count)]
    n = int(rng.integers(num_objects[0], num_objects[1] + 1))
    while len(wanted) < n:
        cand = (str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(SIZES)))
        if all(c[:2] != cand[:2] for c in wanted):
            wanted.append(cand)
    for shape, color, size in wanted:
        obj = _place(rng, scene, shape, color, size)
        if obj is not None:
            scene.objects.append(obj)
    return scene


def _groups(scene: ToyScene) -> list[list[int]]:
    """Object indices grouped by (shape, colour), ordered left to right by the first member."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        by_key.setdefault((o.shape, o.color), []).append(i)
    groups = [sorted(g, key=lambda i: scene.objects[i].cx) for g in by_key.values()]
    return sorted(groups, key=lambda g: scene.objects[g[0]].cx)


def _group_phrase(scene: ToyScene, group: list[int], rng: np.random.Generator) -> str:
    o = scene.objects[group[0]]
    if len(group) > 1:
        return f"{_NUMBER_WORDS.get(len(group), 'several')} {o.color} {o.shape}s"
    size = f"{o.size} " if rng.random() < 0.5 else ""
    return f"a {size}{o.color} {o.shape}"


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _flat_polygon(obj: ToyObject) -> list[float]:
    return [round(v, 2) for xy in obj.polygon for v in xy]


def _save_jpeg(arr: np.ndarray, path: str, cfg: ToyConfig) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=cfg.jpeg_quality)


def _write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def toy_paths(root: str) -> dict[str, str]:
    """Named paths of the toy tree (they mirror the real data layout below `root`)."""
    coco = os.path.join(root, "coco")
    ann = os.path.join(coco, "annotations")
    gcg = os.path.join(root, "GCG")
    paths = {"root": root, "coco": coco}
    for split in ("train2017", "val2017"):
        paths[f"png_{split}"] = os.path.join(ann, f"png_coco_{split}.json")
        paths[f"panoptic_{split}"] = os.path.join(ann, f"panoptic_{split}.json")
        paths[f"panoptic_png_{split}"] = os.path.join(ann, f"panoptic_{split}")
        paths[f"images_{split}"] = os.path.join(coco, split)
    paths["images_train2014"] = os.path.join(coco, "train2014")
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        paths[f"{name}_instances"] = os.path.join(coco, name, "instances.json")
        paths[f"{name}_refs"] = os.path.join(coco, name, f"refs({split_by}).p")
    for split in ("val", "test"):
        for kind in ("caption", "mask"):
            paths[f"gcg_{split}_{kind}"] = os.path.join(
                gcg, "GranDf", "annotations", "val_test", f"{split}_gcg_coco_{kind}_gt.json"
            )
        paths[f"reasonseg_{split}"] = os.path.join(root, "reason_seg", "ReasonSeg", split)
    paths["gcg_images"] = os.path.join(gcg, "GranDf_HA_images", "val_test")
    return paths


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


def _write_png_split(
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
                STUFF_CATEGORIES[lab]["id"] if lab < 2 else _SHAPE_CAT[scene.objects[lab - 2].shape]
            )
            segments_info.append(
                {
                    "id": seg_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": _bbox(m),
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
        groups = _groups(scene)
        for g_idx, group in enumerate(groups):
            if g_idx > 0:
                segments.append(seg("and" if g_idx == len(groups) - 1 else ",", []))
            segments.append(
                seg(
                    _group_phrase(scene, group, rng),
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


def _write_refcoco(rng: np.random.Generator, cfg: ToyConfig, paths: dict, first_id: int) -> None:
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
                    "category_id": _SHAPE_CAT[obj.shape],
                    "segmentation": [_flat_polygon(obj)],
                    "area": int(m.sum()),
                    "bbox": _bbox(m),
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
                        "category_id": _SHAPE_CAT[obj.shape],
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


def _write_gcg(rng: np.random.Generator, cfg: ToyConfig, paths: dict) -> None:
    from hg_lmm.evaluation.rle import mask_to_rle

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
            for group in _groups(scene):
                phrases.append(_group_phrase(scene, group, rng))
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
                        "bbox": _bbox(m),
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


def _write_reasonseg(rng: np.random.Generator, cfg: ToyConfig, paths: dict) -> None:
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


_README = """# HG-LMM toy data (generated by scripts/make_toy_data.py --seed {seed})

Synthetic coloured shapes over "sky" / "grass" stuff, in the official formats and layout:

    coco/annotations/png_coco_{{train,val}}2017.json    PNG narratives
    coco/annotations/panoptic_{{train,val}}2017.json    COCO panoptic: things circle / square /
    coco/annotations/panoptic_{{train,val}}2017/*.png    triangle, stuff sky / grass;
                                                        id = R + 256 G + 256^2 B
    coco/{{train,val}}2017/*.jpg                          PNG images
    coco/refcoco/instances.json, refs(unc).p            splits train / val / testA / testB
    coco/refcoco+/instances.json, refs(unc).p           same, without location words
    coco/refcocog/instances.json, refs(umd).p           splits train / val / test
    coco/train2014/*.jpg                                RefCOCO images
    GCG/GranDf/annotations/val_test/{{val,test}}_gcg_coco_{{caption,mask}}_gt.json
    GCG/GranDf_HA_images/val_test/*.jpg
    reason_seg/ReasonSeg/{{val,test}}/*.jpg + *.json      LabelMe polygons ("target" / "ignore")

Regenerate with `python scripts/make_toy_data.py --out <dir> --seed {seed}`; the output is a
function of the seed and the size flags only.
"""


def make_toy_data(out_dir: str, cfg: ToyConfig | None = None) -> dict[str, str]:
    """Write the toy set below `out_dir` and return `toy_paths(out_dir)`.

    Each part uses its own random stream (derived from cfg.seed), so changing the size of one
    part leaves the others unchanged.
    """
    cfg = cfg or ToyConfig()
    paths = toy_paths(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    def stream(part: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, part])

    _write_png_split(stream(0), cfg, paths, "train2017", cfg.png_train, first_id=1000)
    _write_png_split(stream(1), cfg, paths, "val2017", cfg.png_val, first_id=2000)
    _write_refcoco(stream(2), cfg, paths, first_id=3000)
    _write_gcg(stream(3), cfg, paths)
    _write_reasonseg(stream(4), cfg, paths)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(_README.format(seed=cfg.seed))
    return paths
