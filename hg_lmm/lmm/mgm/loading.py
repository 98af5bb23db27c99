"""Load a released MGM folder strictly, with the two towers from their own repos where needed.

F-LMM builds the towers from their own repos (`mm_vision_tower`: openai/clip-vit-large-patch14-336,
`mm_vision_tower_aux`: laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup) and takes the
CLIP weights of the MGM folder where it has them. `load_mgm` does the same and checks that
every tensor of the model comes from exactly one of these sources:

- the MGM folder (`from_pretrained`);
- `clip_path` (a CLIPVisionModel or CLIPModel folder): CLIP tensors the MGM folder lacks;
- `convnext_path` (open_clip's `open_clip_pytorch_model.bin` or its folder): the ConvNeXt stem
  and stages (`visual.trunk.{stem,stages}.*`), which replace the folder's, as in F-LMM.

Anything still missing, or left over, raises an error that names the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hg_lmm.lmm.mgm.configuration import MGMGemmaConfig

CLIP_PREFIX = "model.vision_tower.vision_tower."
CONVNEXT_PREFIXES = {
    "visual.trunk.stem.": "model.vision_tower_aux.vision_stem.",
    "visual.trunk.stages.": "model.vision_tower_aux.vision_stages.",
}


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or a folder of safetensors / .bin shards."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files and path.is_dir():
        files = sorted(path.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin checkpoint under {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(f)))
        else:
            loaded = torch.load(f, map_location="cpu", weights_only=True)
            state.update(loaded.get("state_dict", loaded))
    return state


def _local(path: str | Path, patterns: list[str]) -> Path:
    """A local folder or file as is; a hub id through `huggingface_hub` (its cache, so offline
    once downloaded, e.g. by scripts/download_checkpoints.py)."""
    if Path(path).exists():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(path), allow_patterns=patterns))


def _read_keys(folder: Path, keys: set[str]) -> dict[str, torch.Tensor]:
    """The tensors `keys` of a model folder's safetensors (or pytorch_model*.bin) shards."""
    if not keys:
        return {}
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as shard:
            for k in keys & set(shard.keys()):
                out[k] = shard.get_tensor(k)
    for f in sorted(folder.glob("pytorch_model*.bin")) if not out else ():
        shard = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        out.update({k: shard[k] for k in keys & set(shard)})
    return out


def clip_tower_state(clip_path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP(Vision)Model checkpoint's vision tensors under MGM's names."""
    out = {}
    for k, v in _read_tensors(_local(clip_path, ["*.json", "*.safetensors"])).items():
        if k.startswith("vision_model."):
            out[CLIP_PREFIX + k] = v
    if not out:
        raise ValueError(f"{clip_path} holds no vision_model.* tensors (not a CLIP checkpoint)")
    return out


def convnext_tower_state(convnext_path: str | Path) -> dict[str, torch.Tensor]:
    """open_clip's ConvNeXt checkpoint: the trunk's stem and stages under MGM's names."""
    path = _local(convnext_path, ["open_clip_config.json", "open_clip_pytorch_model.bin"])
    if path.is_dir():
        path = path / "open_clip_pytorch_model.bin"
    out = {}
    for k, v in _read_tensors(path).items():
        for theirs, ours in CONVNEXT_PREFIXES.items():
            if k.startswith(theirs):
                out[ours + k[len(theirs) :]] = v
    if not out:
        raise ValueError(f"{path} holds no visual.trunk.{{stem,stages}}.* tensors")
    return out


def load_mgm(
    model_path: str | Path,
    *,
    clip_path: str | Path | None = None,
    convnext_path: str | Path | None = None,
    torch_dtype: torch.dtype = torch.bfloat16,
    attn_implementation: str = "sdpa",
) -> Any:
    """The MGM model of a released (or tiny) folder, every tensor loaded (module docstring)."""
    from transformers import AutoConfig

    from hg_lmm.lmm.mgm import mgm_model_class

    model_path = _local(model_path, ["*.json", "*.safetensors", "*.bin", "*.model"])
    config = AutoConfig.from_pretrained(model_path)
    if not hasattr(config, "image_size_aux"):
        raise ValueError(f"{model_path} is not an MGM folder (config.json has no image_size_aux)")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its missing/unexpected report is settled below
    try:
        model, info = mgm_model_class(config).from_pretrained(
            model_path,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(info["missing_keys"])
    if isinstance(config, MGMGemmaConfig):
        missing.discard("lm_head.weight")  # tied to the embeddings
    # transformers renames checkpoint keys containing "gamma" to "weight" while loading (a
    # legacy rule), which hits the ConvNeXt's layer scales; they are read under their own names.
    renamed = {k for k in info["unexpected_keys"] if k.replace(".weight", ".gamma") in missing}
    extra: dict[str, torch.Tensor] = _read_keys(
        model_path, {k.replace(".weight", ".gamma") for k in renamed}
    )
    unexpected = set(info["unexpected_keys"]) - renamed
    if clip_path is not None and any(k.startswith(CLIP_PREFIX) for k in missing):
        extra.update({k: v for k, v in clip_tower_state(clip_path).items() if k in missing})
    if convnext_path is not None:
        extra.update(convnext_tower_state(convnext_path))
    if extra:
        result = model.load_state_dict(
            {k: v.to(torch_dtype) for k, v in extra.items()}, strict=False
        )
        if result.unexpected_keys:
            raise ValueError(f"tower checkpoints hold unknown tensors: {result.unexpected_keys}")
        missing -= set(extra)
    if missing or unexpected:
        raise ValueError(
            f"loading {model_path}: {len(missing)} tensors missing ({sorted(missing)[:4]}...) "
            f"and unexpected {sorted(unexpected)[:4]}; pass clip_path= (the CLIP-L "
            "folder) / convnext_path= (open_clip's ConvNeXt) for the towers the folder lacks"
        )
    return model.eval()
