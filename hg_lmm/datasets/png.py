"""Panoptic Narrative Grounding (PNG): narratives whose segments point into COCO panoptic masks.

Files (BCV-Uniandes/PNG layout):
  png_coco_{split}.json: a list of narratives {image_id (str), caption, segments: [{utterance,
    segment_ids [str], plural, noun}]}.
  panoptic_{split}.json: COCO panoptic {images, annotations: [{image_id, file_name,
    segments_info: [{id, category_id, ...}]}], categories: [{id, isthing, ...}]}.
  panoptic_{split}/*.png: RGB id maps, segment id = R + 256 G + 256^2 B.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hg_lmm.datasets.errors import AnnotationError, DanglingAnnotationError
from hg_lmm.datasets.io import load_image, load_json, rgb_to_id
from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.utils.build import build

logger = logging.getLogger(__name__)


class PNGDataset(Dataset):
    """One sample per narrative: its utterances as pieces, one mask per grounded utterance.

    Arguments:
      json_file: png_coco_{split}.json.
      panoptic_json_file: panoptic_{split}.json of the same split.
      panoptic_png_dir: folder of the panoptic PNGs (panoptic_{split}/).
      image_dir: folder of the COCO images ({split}/).
      transform: applied to each GroundingSample (e.g. `TokenizePieces`).

    A grounded utterance's mask is the union of its segments (plural utterances have several).
    `isthing` is the category's flag for a single segment and True for a plural one, as the
    reference evaluation counts plurals among things. Narratives without any grounded utterance
    carry no training signal and are dropped at load time (the count is logged).
    """

    def __init__(
        self,
        *,
        json_file: str,
        panoptic_json_file: str,
        panoptic_png_dir: str,
        image_dir: str,
        transform: Callable[[GroundingSample], Any] | None = None,
    ) -> None:
        self.json_file = json_file
        self.panoptic_json_file = panoptic_json_file
        self.panoptic_png_dir = panoptic_png_dir
        self.image_dir = image_dir
        self.transform = build(transform)

        narratives = load_json(json_file, what="PNG narratives json")
        if not isinstance(narratives, list):
            raise AnnotationError(
                f"{json_file} should hold a list of narratives, got {type(narratives).__name__}; "
                "pass png_coco_{train,val}2017.json here, not the panoptic json."
            )
        panoptic = load_json(panoptic_json_file, what="COCO panoptic json")
        try:
            self.images = {int(im["id"]): im for im in panoptic["images"]}
            self.panoptic_anns = {int(a["image_id"]): a for a in panoptic["annotations"]}
            self.categories = {int(c["id"]): c for c in panoptic["categories"]}
        except (KeyError, TypeError) as e:
            raise AnnotationError(
                f"{panoptic_json_file} is not a COCO panoptic json (missing {e}); pass "
                "panoptic_{train,val}2017.json here."
            ) from e
        try:
            self.narratives = [
                n for n in narratives if any(s["segment_ids"] for s in n["segments"])
            ]
        except (KeyError, TypeError) as e:
            raise AnnotationError(
                f"{json_file}: a narrative lacks {e}; each needs image_id and segments with "
                "utterance / segment_ids / plural (the PNG format). Re-download the file."
            ) from e
        dropped = len(narratives) - len(self.narratives)
        if dropped:
            logger.info(
                "PNG %s: dropped %d narratives without grounded utterances (%d kept)",
                json_file,
                dropped,
                len(self.narratives),
            )

    def __len__(self) -> int:
        return len(self.narratives)

    def image_key(self, idx: int) -> str:
        """The image file of narrative `idx` (the image id where it is not in the panoptic json,
        which loading the sample reports), without loading anything: evaluation groups the
        narratives of one image by it."""
        image_id = int(self.narratives[idx]["image_id"])
        info = self.images.get(image_id)
        return os.path.join(self.image_dir, info["file_name"]) if info else f"image_id {image_id}"

    def _source(self, idx: int) -> str:
        return f"{self.json_file} narrative #{idx} (image_id {self.narratives[idx]['image_id']})"

    def __getitem__(self, idx: int) -> Any:
        narrative = self.narratives[idx]
        source = self._source(idx)
        image_id = int(narrative["image_id"])
        image_info = self.images.get(image_id)
        pan_ann = self.panoptic_anns.get(image_id)
        if image_info is None or pan_ann is None:
            raise DanglingAnnotationError(
                f"{source}: image_id {image_id} is not in {self.panoptic_json_file}; use the "
                "panoptic json of the same split as the PNG json."
            )
        segments_info = {int(s["id"]): s for s in pan_ann["segments_info"]}

        pieces: list[Piece] = []
        groups: list[tuple[str, list[int]]] = []
        plural: list[bool] = []
        isthing: list[bool] = []
        for seg in narrative["segments"]:
            ids = [int(s) for s in seg["segment_ids"]]
            if not ids:
                pieces.append(Piece(seg["utterance"], -1))
                continue
            for sid in ids:
                if sid not in segments_info:
                    raise DanglingAnnotationError(
                        f"{source}: utterance {seg['utterance']!r} points to segment id {sid}, "
                        f"which is not in the segments_info of {pan_ann['file_name']} in "
                        f"{self.panoptic_json_file}; the PNG and panoptic files do not match "
                        "(re-download them for the same split)."
                    )
            pieces.append(Piece(seg["utterance"], len(groups)))
            groups.append((seg["utterance"], ids))
            plural.append(bool(seg.get("plural", len(ids) > 1)))
            if len(ids) == 1:
                cat = self.categories.get(int(segments_info[ids[0]]["category_id"]))
                if cat is None:
                    raise DanglingAnnotationError(
                        f"{source}: segment {ids[0]} has category_id "
                        f"{segments_info[ids[0]]['category_id']}, which is not in the categories "
                        f"of {self.panoptic_json_file}."
                    )
                isthing.append(bool(cat["isthing"]))
            else:
                isthing.append(True)

        image_path = os.path.join(self.image_dir, image_info["file_name"])
        image = load_image(image_path)
        png_path = os.path.join(self.panoptic_png_dir, pan_ann["file_name"])
        id_map = rgb_to_id(np.asarray(load_image(png_path, what="panoptic PNG")))
        if id_map.shape != (image.height, image.width):
            raise AnnotationError(
                f"{source}: panoptic PNG {png_path} is {id_map.shape[0]}x{id_map.shape[1]} but "
                f"image {image_path} is {image.height}x{image.width}; one of them was resized or "
                "belongs to another image."
            )
        present = set(np.unique(id_map).tolist())
        masks = np.zeros((len(groups), image.height, image.width), dtype=bool)
        for k, (utterance, ids) in enumerate(groups):
            missing = [sid for sid in ids if sid not in present]
            if missing:
                raise DanglingAnnotationError(
                    f"{source}: utterance {utterance!r} points to segment id(s) {missing}, which "
                    f"do not occur in the panoptic PNG {png_path}; the PNG is not the one the "
                    "annotations were made for (re-extract panoptic_*2017.zip)."
                )
            masks[k] = np.isin(id_map, ids)

        sample = GroundingSample(
            image=image,
            pieces=pieces,
            masks=torch.from_numpy(masks),
            plural=plural,
            isthing=isthing,
            source=source,
            image_id=image_id,
            image_path=image_path,
            extra={"caption": narrative.get("caption", "")},
        )
        return self.transform(sample) if self.transform is not None else sample
