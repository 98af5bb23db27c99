"""GranD-f grounded conversation generation (GCG) ground truth, for evaluation.

Files (mbzuai-oryx/groundingLMM eval layout):
  {split}_gcg_coco_caption_gt.json: COCO-style {images: [{id, file_name?, height, width}],
    annotations: [{image_id, caption, labels: [phrase, ...]}]}.
  {split}_gcg_coco_mask_gt.json: COCO-style {images, annotations: [{image_id, segmentation (RLE
    or polygons), category_id: 1, ...}], categories}.
  images: GranDf_HA_images/val_test/{image_id}.jpg.
Images are iterated in the order of the caption json, as the official evaluation does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hg_lmm.datasets.errors import AnnotationError, DanglingAnnotationError
from hg_lmm.datasets.io import coco_segmentation_to_mask, load_image, load_json


@dataclass
class GCGGroundTruth:
    """One GCG evaluation image.

    Fields:
      image: RGB image at its original size.
      image_id: the GranD-f id (the image file stem, e.g. "sa_10010541").
      image_path: the image file.
      caption: the ground-truth caption.
      labels: the ground-truth phrases of the caption.
      masks: [m, h, w] bool ground-truth masks (m may differ from len(labels); the metrics match
        them by IoU and text similarity).
      segmentations: the m raw COCO segmentations (RLE as stored), for RLE-based metrics.
    """

    image: Image.Image
    image_id: Any
    image_path: str
    caption: str
    labels: list[str]
    masks: torch.Tensor
    segmentations: list[Any]


class GranDfGCGDataset(Dataset):
    """Iterates the GranD-f val or test images with their caption and mask ground truth.

    Arguments:
      caption_json: {split}_gcg_coco_caption_gt.json.
      mask_json: {split}_gcg_coco_mask_gt.json.
      image_dir: GranDf_HA_images/val_test.
    """

    def __init__(self, *, caption_json: str, mask_json: str, image_dir: str) -> None:
        self.caption_json, self.mask_json, self.image_dir = caption_json, mask_json, image_dir
        captions = load_json(caption_json, what="GranD-f caption ground truth")
        masks = load_json(mask_json, what="GranD-f mask ground truth")
        try:
            self.images = list(captions["images"])
            image_ids = {im["id"] for im in self.images}
            self.captions: dict[Any, dict] = {}
            for ann in captions["annotations"]:
                self.captions.setdefault(ann["image_id"], ann)
            self.masks: dict[Any, list[dict]] = {}
            for ann in masks["annotations"]:
                self.masks.setdefault(ann["image_id"], []).append(ann)
        except (KeyError, TypeError) as e:
            raise AnnotationError(
                f"{caption_json} / {mask_json}: not GranD-f COCO-style ground truth (missing {e})."
                " Pass {split}_gcg_coco_caption_gt.json and {split}_gcg_coco_mask_gt.json."
            ) from e
        for what, keys, path in (
            ("caption", self.captions, caption_json),
            ("mask", self.masks, mask_json),
        ):
            dangling = sorted(str(k) for k in keys if k not in image_ids)
            if dangling:
                raise DanglingAnnotationError(
                    f"{path}: {what} annotations for image ids {dangling[:5]} that are not in the "
                    f"images of {caption_json}; use the caption and mask files of the same split."
                )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> GCGGroundTruth:
        info = self.images[idx]
        image_id = info["id"]
        source = f"{self.caption_json} image {image_id}"
        cap = self.captions.get(image_id)
        if cap is None:
            raise DanglingAnnotationError(
                f"{source}: no caption annotation for this image; the file is incomplete."
            )
        image_path = os.path.join(self.image_dir, info.get("file_name") or f"{image_id}.jpg")
        image = load_image(image_path)
        h, w = image.height, image.width
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise AnnotationError(
                f"{source}: the json says {info['height']}x{info['width']} but {image_path} is "
                f"{h}x{w}; the image was resized or replaced (re-download GranDf_HA_images)."
            )
        anns = self.masks.get(image_id, [])
        masks = [
            coco_segmentation_to_mask(
                a["segmentation"], h, w, source=f"{self.mask_json} ann {a.get('id')}"
            )
            for a in anns
        ]
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        return GCGGroundTruth(
            image=image,
            image_id=image_id,
            image_path=image_path,
            caption=cap["caption"],
            labels=list(cap.get("labels", [])),
            masks=torch.from_numpy(stacked),
            segmentations=[a["segmentation"] for a in anns],
        )
