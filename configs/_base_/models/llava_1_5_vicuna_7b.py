# Frozen LLaVA-1.5-7B (Vicuna, bf16) and how its training captions are tokenised.
# Offline: set `model_path` here to a local copy of the repo (checkpoints/README.md).
from transformers import AutoTokenizer

from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.lmm.llava import build_llava_adapter, llava_train_prompt

model_path = "llava-hf/llava-1.5-7b-hf"
lmm = dict(type=build_llava_adapter, model_path=model_path, torch_dtype="bfloat16")

# The adapter's TRAIN_PROMPT (the INSTRUCTION of xtuner's vicuna template, one <image> token).
# Built by TokenizePieces (an imported string would be dumped as its dotted name).
prompt = dict(type=llava_train_prompt)
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path),
    prompt=prompt,
)
