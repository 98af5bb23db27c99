"""ReasonSeg (LISA) for evaluation: images with LabelMe json holding polygons and questions.

Each `{name}.jpg` in ReasonSeg/{val,test} has a `{name}.json` with
  shapes: [{label, points: [[x, y], ...]}]: label "target" (or any label without "ignore") marks
    the answer, a label containing "ignore" marks a region left out of the metrics, and label
    "flag" is a deprecated annotation that is skipped;
  text: the question(s); is_sentence: whether they are full sentences (else short phrases).
The masks are rasterised as LISA does (utils/data_processing.py): polygons sorted by decreasing
area, each drawn (outline of width 1 and fill) over the previous ones, so a small region inside a
larger one keeps its own label.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hg_lmm.datasets.errors import AnnotationError, MissingFileError
from hg_lmm.datasets.io import load_image, require_file

IGNORE_VALUE = 255


@dataclass
class ReasonSegSample:
    """One ReasonSeg image.

    Fields:
      image: RGB image at its original size.
      image_path / json_path: the files.
      questions: every question of the json (LISA's evaluation uses the first).
      is_sentence: whether the questions are sentences (else short noun phrases).
      target: [h, w] bool answer mask.
      ignore: [h, w] bool region excluded from the metrics.
    """

    image: Image.Image
    image_path: str
    json_path: str
    questions: list[str]
    is_sentence: bool
    target: torch.Tensor
    ignore: torch.Tensor

    @property
    def label_map(self) -> torch.Tensor:
        """[h, w] uint8: 1 target, 255 ignore, 0 background (LISA's encoding)."""
        out = self.target.to(torch.uint8)
        out[self.ignore] = IGNORE_VALUE
        return out


def labelme_masks(
    shapes: list[dict], height: int, width: int, *, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """LabelMe polygons -> (target [h, w] bool, ignore [h, w] bool), with LISA's painting order."""
    import cv2

    polys: list[tuple[int, np.ndarray, int]] = []
    for shape in shapes:
        label = str(shape.get("label", ""))
        if label.lower() == "flag":
            continue
        try:
            pts = np.array([shape["points"]], dtype=np.int32)
        except (KeyError, ValueError, TypeError) as e:
            raise AnnotationError(
                f"{source}: shape {label!r} has no valid 'points' ({e}); fix the polygon."
            ) from e
        if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[1] < 1:
            raise AnnotationError(f"{source}: shape {label!r} points are not [[x, y], ...].")
        tmp = np.zeros((height, width), np.uint8)
        cv2.polylines(tmp, pts, True, 1, 1)
        cv2.fillPoly(tmp, pts, 1)
        value = IGNORE_VALUE if "ignore" in label.lower() else 1
        polys.append((int(tmp.sum()), pts, value))
    label_map = np.zeros((height, width), np.uint8)
    # LISA reverses an ascending argsort, so equal areas are painted in reverse file order.
    order = np.argsort([p[0] for p in polys], kind="stable")[::-1]
    for _, pts, value in (polys[i] for i in order):
        cv2.polylines(label_map, pts, True, value, 1)
        cv2.fillPoly(label_map, pts, value)
    return label_map == 1, label_map == IGNORE_VALUE


def _read_labelme(path: str) -> dict:
    require_file(
        path, "ReasonSeg json", "Every ReasonSeg image needs a LabelMe json of the same name."
    )
    with open(path, "rb") as f:
        raw = f.read()
    # Some ReasonSeg files are cp1252-encoded; LISA falls back to that encoding too.
    for encoding in ("utf-8", "cp1252"):
        try:
            return json.loads(raw.decode(encoding))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    raise AnnotationError(f"{path} is not valid json (utf-8 or cp1252); re-download it.")


class ReasonSegDataset(Dataset):
    """Iterates one ReasonSeg split folder (ReasonSeg/val or ReasonSeg/test), sorted by name.

    Arguments:
      root: the split folder with the *.jpg images and their *.json annotations.
    """

    def __init__(self, *, root: str) -> None:
        self.root = root
        if not os.path.isdir(root):
            raise MissingFileError(
                f"ReasonSeg folder not found: {root}. Download LISA's ReasonSeg and point the "
                "config at reason_seg/ReasonSeg/{val,test} (see data/README.md)."
            )
        self.images = sorted(glob.glob(os.path.join(root, "*.jpg")))
        if not self.images:
            raise MissingFileError(f"no *.jpg images in ReasonSeg folder {root}.")
        # A json without its image would otherwise be left out of the metrics without a word.
        stems = {path[: -len(".jpg")] for path in self.images}
        orphans = sorted(
            path
            for path in glob.glob(os.path.join(root, "*.json"))
            if path[: -len(".json")] not in stems
        )
        if orphans:
            shown = ", ".join(os.path.basename(p) for p in orphans[:5])
            raise MissingFileError(
                f"{len(orphans)} ReasonSeg annotation(s) in {root} have no image ({shown}"
                f"{' ...' if len(orphans) > 5 else ''}; each needs the .jpg of the same name). "
                "Re-extract the split, or remove the json files of images you left out."
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> ReasonSegSample:
        image_path = self.images[idx]
        json_path = image_path[: -len(".jpg")] + ".json"
        anno = _read_labelme(json_path)
        image = load_image(image_path)
        try:
            questions = (
                [str(q) for q in anno["text"]]
                if isinstance(anno["text"], list)
                else [str(anno["text"])]
            )
            shapes = anno["shapes"]
        except KeyError as e:
            raise AnnotationError(
                f"{json_path} lacks {e}; a ReasonSeg json needs 'shapes', 'text' and 'is_sentence'."
            ) from e
        if not questions:
            raise AnnotationError(f"{json_path} has no question in 'text'.")
        target, ignore = labelme_masks(shapes, image.height, image.width, source=json_path)
        return ReasonSegSample(
            image=image,
            image_path=image_path,
            json_path=json_path,
            questions=questions,
            is_sentence=bool(anno.get("is_sentence", False)),
            target=torch.from_numpy(target),
            ignore=torch.from_numpy(ignore),
        )
