"""DeepSeek-VL configs, in the format of the official `config.json` files.

The released checkpoints (deepseek-ai/deepseek-vl-{1.3b,7b}-chat) describe the model as

    {"model_type": "multi_modality",
     "vision_config": {"cls": "CLIPVisionTower" | "HybridVisionTower", "params": {...}},
     "aligner_config": {"cls": "MlpProjector", "params": {"projector_type": ..., ...}},
     "language_config": {<LlamaConfig fields>}}

Tower sizes are looked up from `params["model_name"]` (the presets below are the published numbers
of those towers). Any preset number can be overridden in `params`, which is how tiny test models are
described. The towers' selected feature layers (HG-LMM's multi-layer vision features) are two extra,
optional top-level fields; released configs do not carry them and get the HG-LMM defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import LlamaConfig, PretrainedConfig

# Published tower shapes, by the `model_name` the official configs use.
SIGLIP_PRESETS: dict[str, dict[str, Any]] = {
    "siglip_large_patch16_384": dict(
        image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4.0
    ),
}
SAM_PRESETS: dict[str, dict[str, Any]] = {
    # SAM-B ViTDet plus DeepSeek-VL's two stride-2 convs; the block outputs are resized to 96x96
    # before them, so that 96 / 2 / 2 = 24 matches the SigLIP grid.
    "sam_b_downsample": dict(
        image_size=1024,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        mlp_ratio=4.0,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        out_chans=256,
        downsample_channels=(512, 1024),
        downsample_input_size=96,
    ),
}

# HG-LMM's selected blocks (0-based) for the released towers (docs/architecture.md, "The dims
# and features records").
DEFAULT_SIGLIP_FEATURE_LAYERS = (3, 6, 9, 12, 15, 18, 20, 23)
DEFAULT_SAM_FEATURE_LAYERS = (1, 2, 4, 5, 7, 9, 10, 11)


@dataclass(frozen=True)
class SigLIPSettings:
    """Resolved sizes of a SigLIP tower (timm `VisionTransformer`, MAP head, no class token)."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class SAMSettings:
    """Resolved sizes of the SAM ViTDet high-resolution tower with DeepSeek-VL's extras."""

    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    window_size: int
    global_attn_indexes: tuple[int, ...]
    out_chans: int
    downsample_channels: tuple[int, ...]
    downsample_input_size: int

    @property
    def out_channels(self) -> int:
        return self.downsample_channels[-1] if self.downsample_channels else self.out_chans

    @property
    def grid(self) -> int:
        """Side of the output map after the resize and the stride-2 downsample convs."""
        size = self.downsample_input_size
        for _ in self.downsample_channels:
            size = (size + 1) // 2  # 3x3, stride 2, padding 1
        return size


def tower_kind(params: Mapping[str, Any]) -> str:
    """'siglip' or 'sam', from the tower's `model_name` (as the official code dispatches)."""
    name = str(params.get("model_name", ""))
    if name.startswith("siglip"):
        return "siglip"
    if name.startswith("sam"):
        return "sam"
    raise ValueError(
        f"vision tower model_name {name!r} is not supported; use a 'siglip_*' or 'sam_*' name "
        f"(presets: {sorted(SIGLIP_PRESETS) + sorted(SAM_PRESETS)})"
    )


def _merged(params: Mapping[str, Any], presets: Mapping[str, dict], keys: Sequence[str]) -> dict:
    name = params.get("model_name")
    merged = dict(presets.get(name, {}))
    merged.update({k: params[k] for k in keys if k in params})
    missing = [k for k in keys if k not in merged]
    if missing:
        raise ValueError(
            f"vision tower {name!r} has no preset and its params lack {missing}; "
            f"give them in the tower params or use one of {sorted(presets)}"
        )
    return merged


def siglip_settings(params: Mapping[str, Any]) -> SigLIPSettings:
    """Sizes of a SigLIP tower from its params (preset of `model_name`, then overrides).

    The depth follows the official rule: `select_layer <= 0` keeps `layers + select_layer + 1`
    blocks (all of them for -1), a positive `select_layer` keeps that many.
    """
    keys = ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio")
    m = _merged(params, SIGLIP_PRESETS, keys)
    layers, select = int(m["layers"]), int(params.get("select_layer", -1))
    depth = min(layers, layers + select + 1) if select <= 0 else min(layers, select)
    if depth <= 0:
        raise ValueError(f"select_layer={select} leaves no SigLIP block out of {layers}")
    return SigLIPSettings(
        image_size=int(m["image_size"]),
        patch_size=int(m["patch_size"]),
        width=int(m["width"]),
        depth=depth,
        heads=int(m["heads"]),
        mlp_ratio=float(m["mlp_ratio"]),
    )


def sam_settings(params: Mapping[str, Any]) -> SAMSettings:
    """Sizes of the SAM high-resolution tower from its params (preset, then overrides)."""
    keys = (
        "image_size",
        "patch_size",
        "width",
        "layers",
        "heads",
        "mlp_ratio",
        "window_size",
        "global_attn_indexes",
        "out_chans",
        "downsample_channels",
        "downsample_input_size",
    )
    m = _merged(params, SAM_PRESETS, keys)
    return SAMSettings(
        image_size=int(m["image_size"]),
        patch_size=int(m["patch_size"]),
        width=int(m["width"]),
        depth=int(m["layers"]),
        heads=int(m["heads"]),
        mlp_ratio=float(m["mlp_ratio"]),
        window_size=int(m["window_size"]),
        global_attn_indexes=tuple(int(i) for i in m["global_attn_indexes"]),
        out_chans=int(m["out_chans"]),
        downsample_channels=tuple(int(c) for c in m["downsample_channels"]),
        downsample_input_size=int(m["downsample_input_size"]),
    )


class _ClassAndParams(PretrainedConfig):
    """A released sub-config: a class name (`cls`) and its keyword `params`."""

    def __init__(self, cls: str = "", params: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.cls = cls if isinstance(cls, str) else cls.__name__
        self.params = dict(params or {})


class VisionConfig(_ClassAndParams):
    """`vision_config`: the tower class name (`cls`) and its keyword `params`, as released."""

    model_type = "vision"


class AlignerConfig(_ClassAndParams):
    """`aligner_config`: the projector class name (`cls`) and its `params`, as released."""

    model_type = "aligner"


def _as_config(value: Any, config_cls: type[PretrainedConfig]) -> PretrainedConfig:
    if value is None:
        return config_cls()
    if isinstance(value, config_cls):
        return value
    if isinstance(value, PretrainedConfig):
        return config_cls(**value.to_dict())
    return config_cls(**value)


class MultiModalityConfig(PretrainedConfig):
    """DeepSeek-VL (`model_type` "multi_modality"), loadable from the official `config.json`.

    Arguments:
      vision_config: VisionConfig or its dict (`cls` CLIPVisionTower or HybridVisionTower).
      aligner_config: AlignerConfig or its dict (`cls` MlpProjector).
      language_config: LlamaConfig or its dict.
      vision_feature_layers: SigLIP blocks (0-based) of the multi-layer vision features; None means
        HG-LMM's [3, 6, 9, 12, 15, 18, 20, 23] (only valid for a 24-block tower).
      high_res_feature_layers: SAM blocks paired with them in the hybrid tower; None means
        [1, 2, 4, 5, 7, 9, 10, 11] (only valid for a 12-block tower).
    """

    model_type = "multi_modality"

    def __init__(
        self,
        vision_config: Any = None,
        aligner_config: Any = None,
        language_config: Any = None,
        vision_feature_layers: Sequence[int] | None = None,
        high_res_feature_layers: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.vision_config = _as_config(vision_config, VisionConfig)
        self.aligner_config = _as_config(aligner_config, AlignerConfig)
        self.language_config = _as_config(language_config, LlamaConfig)
        self.vision_feature_layers = (
            None if vision_feature_layers is None else [int(i) for i in vision_feature_layers]
        )
        self.high_res_feature_layers = (
            None if high_res_feature_layers is None else [int(i) for i in high_res_feature_layers]
        )

    # --- derived sizes (the adapter builds its dims record from these) ------------------------

    @property
    def is_hybrid(self) -> bool:
        return self.vision_config.cls == "HybridVisionTower"

    def _low_params(self) -> Mapping[str, Any]:
        params = self.vision_config.params
        return params["low_res_cfg"] if self.is_hybrid else params

    @property
    def vision_input_size(self) -> int:
        """S: side of the square pixel_values the vision model receives (1024 for 7B)."""
        params = self.vision_config.params
        if self.is_hybrid:
            return sam_settings(params["high_res_cfg"]).image_size
        return siglip_settings(params).image_size

    @property
    def vision_grid(self) -> int:
        """g: side of the image-token grid (that of the SigLIP tower)."""
        return siglip_settings(self._low_params()).grid

    @property
    def num_image_tokens(self) -> int:
        """N = g * g tokens each `<image_placeholder>` expands to (576 for the released models)."""
        return self.vision_grid**2

    @property
    def vision_channels(self) -> int:
        """C: width of the projected vision features (the aligner output, = LLM hidden size)."""
        return int(self.aligner_config.params["n_embed"])

    def feature_layers(self) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(SigLIP blocks, SAM blocks or None) of the multi-layer vision features, validated."""
        low_depth = siglip_settings(self._low_params()).depth
        low = _resolve_layers(
            self.vision_feature_layers,
            DEFAULT_SIGLIP_FEATURE_LAYERS,
            low_depth,
            "vision_feature_layers",
        )
        if not self.is_hybrid:
            return low, None
        high_depth = sam_settings(self.vision_config.params["high_res_cfg"]).depth
        high = _resolve_layers(
            self.high_res_feature_layers,
            DEFAULT_SAM_FEATURE_LAYERS,
            high_depth,
            "high_res_feature_layers",
        )
        if len(high) != len(low):
            raise ValueError(
                f"high_res_feature_layers {high} and vision_feature_layers {low} must pair up "
                "one to one; give both with the same length"
            )
        return low, high


def _resolve_layers(
    layers: Sequence[int] | None, default: tuple[int, ...], depth: int, name: str
) -> tuple[int, ...]:
    chosen = default if layers is None else tuple(int(i) for i in layers)
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad or not chosen:
        raise ValueError(
            f"{name}={list(chosen)} does not fit a {depth}-block tower (bad: {bad}); set "
            f"config.{name} to 0-based block indices below {depth}"
        )
    return chosen
