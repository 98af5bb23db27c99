# Training data of every released config: PNG (COCO train2017 narratives) and the train splits of
# RefCOCO (unc), RefCOCO+ (unc) and RefCOCOg (umd), concatenated; one sample per image/narrative.
# `data_root` is relative to the repo root; the files below it are placed by
# hg_lmm/datasets/layout.py (data/README.md). A file passed explicitly (e.g. ann_file=...)
# replaces the layout's.
#
# The LMM decides how captions are tokenised, so each leaf adds its `tokenize` transform (from a
# configs/_base_/models/ piece) to every data set:
#   train_dataloader.dataset.datasets = [dict(d, transform=tokenize) for d in train_datasets]
from mmengine.dataset import DefaultSampler

from hg_lmm.datasets.collate import concat_datasets, list_collate
from hg_lmm.datasets.layout import png_dataset, refcoco_dataset

data_root = "data/"
batch_size = 1  # per GPU
dataloader_num_workers = 4

png_train = dict(type=png_dataset, data_root=data_root, split="train2017")
refcoco_train = dict(type=refcoco_dataset, data_root=data_root, name="refcoco", split="train")
refcoco_plus_train = dict(type=refcoco_dataset, data_root=data_root, name="refcoco+", split="train")
refcocog_train = dict(type=refcoco_dataset, data_root=data_root, name="refcocog", split="train")
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
