# Frozen Mini-Gemini MGM-7B (Vicuna-7B, bf16) and how its training captions are tokenised.
# Offline: set the three paths here to local copies of the repos (checkpoints/README.md). As in
# F-LMM's config, the CLIP tower comes from the MGM folder where it has it, else from
# clip_path, and the ConvNeXt from convnext_path (open_clip's checkpoint).
from hg_lmm.datasets.transforms import TokenizePieces
from hg_lmm.lmm.mgm import build_mgm_adapter, mgm_tokenizer, mgm_train_prompt

model_path = "YanweiLi/MGM-7B"
clip_path = "openai/clip-vit-large-patch14-336"
convnext_path = "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
lmm = dict(
    type=build_mgm_adapter,
    model_path=model_path,
    template="vicuna",
    clip_path=clip_path,
    convnext_path=convnext_path,
    torch_dtype="bfloat16",
)

# The INSTRUCTION of xtuner's vicuna template around F-LMM's prompt (one <image> token, which
# mgm_tokenizer adds to the released tokenizer as F-LMM does).
prompt = dict(type=mgm_train_prompt, template="vicuna")
tokenize = dict(
    type=TokenizePieces,
    tokenizer=dict(type=mgm_tokenizer, pretrained_model_name_or_path=model_path),
    prompt=prompt,
)
