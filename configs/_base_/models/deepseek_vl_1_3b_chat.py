# Frozen DeepSeek-VL-1.3B-chat (bf16; SigLIP-L tower) and how its training captions are
# tokenised. Offline: set `model_path` here to a local copy of the repo (checkpoints/README.md).
from transformers import AutoTokenizer

from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.lmm.deepseek_vl.adapter import build_deepseek_vl_adapter

model_path = "deepseek-ai/deepseek-vl-1.3b-chat"
lmm = dict(type=build_deepseek_vl_adapter, model_path=model_path, torch_dtype="bfloat16")

# The adapter's `train_prompt` for the 24x24 SigLIP grid: 576 expanded image tags. Spelled out
# because config values are plain data; tests/test_released_configs.py checks that it equals what
# the adapter builds.
prompt = (
    "User: "
    + "<image_placeholder>" * 576
    + "Please give me a description of the image.\n\nAssistant:"
)
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path),
    prompt=prompt,
)
