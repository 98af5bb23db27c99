"""RefCOCO / RefCOCO+ / RefCOCOg through mmdet's `RefCocoDataset` and `LoadAnnotations`.

mmdet reads `instances.json` + `refs(unc|umd).p` (the lichengunc/refer format) and already groups
the referring expressions by image; this wrapper turns each image into one GroundingSample whose
pieces are the expressions, each followed by a period token (see `Piece.period_after`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from hg_lmm.datasets.errors import AnnotationError, DanglingAnnotationError
from hg_lmm.datasets.io import load_image, load_json, load_pickle, require_file
from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.utils.build import build


def _require_mmdet() -> Any:
    try:
        from mmdet.datasets import RefCocoDataset as MMRefCocoDataset
        from mmdet.datasets.transforms import LoadAnnotations
    except ImportError as e:
        raise ImportError(
            f"RefCOCO data is read with mmdet 3.3.0, which cannot be imported ({e}). Install the "
            "pinned requirements: `pip install -r requirements.txt` (mmcv 2.1.0 first)."
        ) from e
    return MMRefCocoDataset, LoadAnnotations


_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _check_files(ann_path: str, refs_path: str, cause: Exception) -> None:
    """Raise a named AnnotationError if either file is damaged or not in the refer format (only
    called after mmdet failed, so reading them again costs nothing that matters)."""
    instances = load_json(ann_path, what="RefCOCO instances json")
    if not isinstance(instances, dict) or not all(
        isinstance(instances.get(k), list) for k in ("images", "annotations")
    ):
        raise AnnotationError(
            f"{ann_path} is not a COCO instances json (it needs 'images' and 'annotations' "
            f"lists; got {type(instances).__name__}). Use the instances.json of the refer data."
        ) from cause
    refs = load_pickle(refs_path, what="RefCOCO refs pickle")
    if not isinstance(refs, list):
        raise AnnotationError(
            f"{refs_path} holds a pickled {type(refs).__name__}, not the list of refs of the refer "
            "format; use the refs(unc).p / refs(umd).p shipped with the data (data/README.md)."
        ) from cause
    bad = next((r for r in refs if not isinstance(r, dict) or not set(_REF_KEYS) <= set(r)), None)
    if bad is not None:
        raise AnnotationError(
            f"{refs_path}: a ref is {str(bad)[:80]!r}; every ref needs {list(_REF_KEYS)} (the "
            "refer format). Use the refs file shipped with the data (data/README.md)."
        ) from cause


def _explain_dangling(ann_path: str, refs_path: str) -> str:
    """Name the refs that point nowhere (only called after mmdet failed, so cost is irrelevant)."""
    instances = load_json(ann_path, what="RefCOCO instances json")
    refs = load_pickle(refs_path, what="RefCOCO refs pickle")
    ann_ids = {a["id"] for a in instances.get("annotations", [])}
    image_ids = {im["id"] for im in instances.get("images", [])}
    bad = [
        f"ref_id {r.get('ref_id')} -> ann_id {r.get('ann_id')}"
        for r in refs
        if r.get("ann_id") not in ann_ids
    ]
    bad += [
        f"ref_id {r.get('ref_id')} -> image_id {r.get('image_id')}"
        for r in refs
        if r.get("ann_id") in ann_ids and r.get("image_id") not in image_ids
    ]
    listed = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
    return (
        f"{len(bad)} ref(s) in {refs_path} point to annotations or images missing from "
        f"{ann_path} ({listed}). Use the instances.json shipped in the same folder as the refs "
        "file (refcoco/, refcoco+/ or refcocog/)."
    )


class RefCocoDataset(Dataset):
    """One sample per image: all of its referring expressions (of one split) and their masks.

    Arguments:
      data_root: root that `ann_file`, `split_file` and `image_dir` are relative to (data/coco/).
      ann_file: e.g. "refcoco/instances.json".
      split_file: e.g. "refcoco/refs(unc).p" or "refcocog/refs(umd).p".
      image_dir: image folder below data_root ("train2014/").
      split: "train", "val", "testA", "testB" (unc) or "train", "val", "test" (umd).
      text_mode: mmdet's choice of expressions per object: "select_first" (one per object, the
        reference setting), "original" (every expression; masks repeat), "random", "concat".
      transform: applied to each GroundingSample (e.g. `TokenizePieces`).
    """

    def __init__(
        self,
        *,
        data_root: str,
        ann_file: str,
        split_file: str,
        image_dir: str = "train2014/",
        split: str = "train",
        text_mode: str = "select_first",
        transform: Callable[[GroundingSample], Any] | None = None,
    ) -> None:
        mm_dataset_cls, load_annotations_cls = _require_mmdet()
        self.ann_path = os.path.join(data_root, ann_file)
        self.refs_path = os.path.join(data_root, split_file)
        fix = "Prepare RefCOCO as in data/README.md (mmdet's RefCOCO tutorial)."
        require_file(self.ann_path, "RefCOCO instances json", fix)
        require_file(self.refs_path, "RefCOCO refs pickle", fix)
        self.split = split
        self.transform = build(transform)
        try:
            self._mm = mm_dataset_cls(
                data_root=data_root,
                ann_file=ann_file,
                split_file=split_file,
                data_prefix=dict(img_path=image_dir),
                split=split,
                text_mode=text_mode,
                pipeline=[],
            )
        except Exception as e:
            # mmdet fails with a bare traceback on a damaged file; name the file and the problem.
            _check_files(self.ann_path, self.refs_path, e)
            if isinstance(e, KeyError):
                raise DanglingAnnotationError(
                    _explain_dangling(self.ann_path, self.refs_path)
                ) from e
            if not isinstance(e, ValueError) or "No sample in split" not in str(e):
                raise
            splits = sorted({r["split"] for r in load_pickle(self.refs_path)})
            raise AnnotationError(
                f"{self.refs_path} has no ref in split {split!r}; its splits are {splits}."
            ) from e
        self._load_masks = load_annotations_cls(
            with_bbox=False, with_label=False, with_mask=True, with_seg=False, poly2mask=True
        )

    def __len__(self) -> int:
        return len(self._mm)

    def image_key(self, idx: int) -> str:
        """The image file of sample `idx`, without loading anything (evaluation groups the
        samples that share an image by it, e.g. across RefCOCO and RefCOCO+)."""
        return self._mm.get_data_info(idx)["img_path"]

    def __getitem__(self, idx: int) -> Any:
        info = self._mm.get_data_info(idx)
        source = f"{self.refs_path} split {self.split!r}, image_id {info['img_id']}"
        image = load_image(info["img_path"])
        results = self._load_masks.transform(
            {"ori_shape": (image.height, image.width), "instances": info["instances"]}
        )
        if results["gt_ignore_flags"].any():
            bad = [t for t, f in zip(info["text"], results["gt_ignore_flags"]) if f]
            raise AnnotationError(
                f"{source}: the object(s) of {bad} have no valid polygon in {self.ann_path}; fix "
                "or drop those annotations."
            )
        masks = torch.from_numpy(results["gt_masks"].masks.astype(bool))
        texts = list(info["text"])
        sample = GroundingSample(
            image=image,
            pieces=[Piece(t, k, period_after=True) for k, t in enumerate(texts)],
            masks=masks,
            plural=[False] * len(texts),
            isthing=[True] * len(texts),
            source=source,
            image_id=info["img_id"],
            image_path=info["img_path"],
        )
        return self.transform(sample) if self.transform is not None else sample
