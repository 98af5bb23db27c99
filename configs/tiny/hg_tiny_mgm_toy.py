# The tiny CPU config with a tiny random Mini-Gemini (MGM-2B's layout: Gemma decoder, CLIP +
# ConvNeXt towers, patch-info mining; built once under work_dirs/tiny_lmms/) in place of the tiny
# LLaVA, on the toy data. For chat / web-demo smoke runs on a new LMM family, e.g.
#   python scripts/train.py configs/tiny/hg_tiny_mgm_toy.py --work-dir work_dirs/tiny_mgm
#   python scripts/web_demo.py configs/tiny/hg_tiny_mgm_toy.py --device cpu \
#       --checkpoint "$(cat work_dirs/tiny_mgm/last_checkpoint)"
from mmengine.config import read_base

from hg_lmm.lmm.mgm import mgm_train_prompt
from hg_lmm.testing.tiny_mgm import tiny_mgm_adapter, tiny_mgm_tokenizer

with read_base():
    from .hg_tiny_llava_toy import *

tiny_lmm_dir = "work_dirs/tiny_lmms/mgm_gemma"
model.update(lmm=dict(type=tiny_mgm_adapter, variant="gemma", cache_dir=tiny_lmm_dir))
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=tiny_mgm_tokenizer, variant="gemma", cache_dir=tiny_lmm_dir),
    prompt=dict(type=mgm_train_prompt, template="gemma"),
)
train_dataloader.dataset.datasets = [
    dict(d, transform=tokenize) for d in train_dataloader.dataset.datasets
]
