# Frozen LLaVA-NeXT-7B (LLaVA-v1.6, Vicuna decoder, bf16) and how its training captions are
# tokenised. Offline: set `model_path` here to a local copy of the repo (checkpoints/README.md).
from transformers import AutoTokenizer

from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.lmm.llava_next import build_llava_next_adapter, llava_next_train_prompt

model_path = "llava-hf/llava-v1.6-vicuna-7b-hf"
# attention_grid="fine": F-LMM's reading (coarse and fine maps on the fine grid); the HG leaves
# override it with "base" (docs/architecture.md, "LLaVA-NeXT").
lmm = dict(
    type=build_llava_next_adapter,
    model_path=model_path,
    template="vicuna",
    attention_grid="fine",
    torch_dtype="bfloat16",
)

# The INSTRUCTION of xtuner's vicuna template around F-LMM's prompt (one <image> token), built
# by TokenizePieces (an imported string would be dumped as its dotted name).
prompt = dict(type=llava_next_train_prompt, template="vicuna")
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=model_path),
    prompt=prompt,
)
