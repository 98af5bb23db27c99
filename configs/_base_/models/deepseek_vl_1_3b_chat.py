# Frozen DeepSeek-VL-1.3B-chat (bf16; SigLIP-L tower) and how its training captions are
# tokenised. Offline: set `model_path` here to a local copy of the repo (checkpoints/README.md).
from transformers import AutoTokenizer

from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.lmm.deepseek_vl.adapter import build_deepseek_vl_adapter
from hg_lmm.lmm.deepseek_vl.processing import deepseek_vl_train_prompt

model_path = "deepseek-ai/deepseek-vl-1.3b-chat"
lmm = dict(type=build_deepseek_vl_adapter, model_path=model_path, torch_dtype="bfloat16")

# The adapter's `train_prompt` for the 24x24 grid (576 expanded image tags), built by
# TokenizePieces. Not an imported string: mmengine dumps that into the work dir's config as its
# dotted name, which a reloaded config would take for the prompt.
prompt = dict(type=deepseek_vl_train_prompt, num_image_tokens=576)
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path),
    prompt=prompt,
)
