# Training data of every released config: PNG (COCO train2017 narratives) and the train splits of
# RefCOCO (unc), RefCOCO+ (unc) and RefCOCOg (umd), concatenated; one sample per image/narrative.
# Paths are relative to the repo root (layout: data/README.md).
#
# The LMM decides how captions are tokenised, so each leaf adds its `tokenize` transform (from a
# configs/_base_/models/ piece) to every data set:
#   train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]
from mmengine.dataset import DefaultSampler

from hg_lmm.datasets.collate import concat_datasets, list_collate
from hg_lmm.datasets.png import PNGDataset
from hg_lmm.datasets.refcoco import RefCocoDataset

data_root = "data/"
coco_root = data_root + "coco/"
batch_size = 1  # per GPU
dataloader_num_workers = 4

png_train = dict(
    type=PNGDataset,
    json_file=coco_root + "annotations/png_coco_train2017.json",
    panoptic_json_file=coco_root + "annotations/panoptic_train2017.json",
    panoptic_png_dir=coco_root + "annotations/panoptic_train2017/",
    image_dir=coco_root + "train2017/",
)
refcoco_train = dict(
    type=RefCocoDataset,
    data_root=coco_root,
    ann_file="refcoco/instances.json",
    split_file="refcoco/refs(unc).p",
    image_dir="train2014/",
    split="train",
)
refcoco_plus_train = dict(
    type=RefCocoDataset,
    data_root=coco_root,
    ann_file="refcoco+/instances.json",
    split_file="refcoco+/refs(unc).p",
    image_dir="train2014/",
    split="train",
)
refcocog_train = dict(
    type=RefCocoDataset,
    data_root=coco_root,
    ann_file="refcocog/instances.json",
    split_file="refcocog/refs(umd).p",
    image_dir="train2014/",
    split="train",
)
train_datasets = [png_train, refcoco_train, refcoco_plus_train, refcocog_train]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    # Untokenised here; the leaf replaces `datasets` with tokenising copies (see above).
    # A corrupt sample mid-run is skipped with a warning and a count (hg_lmm.datasets.skip).
    dataset=dict(type=concat_datasets, datasets=train_datasets, skip_bad_samples=True),
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=list_collate),
)
