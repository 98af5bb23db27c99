"""Mini-Gemini (MGM) configs, in the format of the official `config.json` files.

The released folders (YanweiLi/MGM-2B, MGM-7B, MGM-7B-HD) are a decoder config (`model_type`
"mgm_gemma" on Gemma, "mgm" on LLaMA) plus MGM's fields:

- `mm_vision_tower` / `mm_vision_tower_aux`: the names of the two towers (CLIP-L/14-336 and
  open_clip's ConvNeXt-L d-320); their sizes are the presets below, overridable through
  `vision_tower_config` (CLIPVisionConfig arguments) and `vision_tower_aux_config` (ConvNeXt
  `depths` / `dims`), which is how tiny test models are described;
- `mm_hidden_size` (CLIP width), `mm_hidden_size_aux` (sum of the ConvNeXt stage widths),
  `mm_projector_type` ("mlp2x_gelu"), `mm_vision_select_layer` (-2, CLS dropped);
- `image_size_aux` (the ConvNeXt input side, 768; 1536 for HD), `image_grid` (1; 2 for HD: the
  CLIP input is cut into grid x grid crops) and `image_global` (HD: a global view as well).

HG-LMM's selected CLIP blocks for the multi-layer vision features are one more optional field,
`vision_feature_layers`; released configs do not carry it and get LLaVA's defaults.
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPVisionConfig, GemmaConfig, LlamaConfig

# openai/clip-vit-large-patch14-336 (CLIPVisionConfig arguments).
CLIP_L_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
# open_clip's convnext_large_d_320 trunk (timm `convnext_large`).
CONVNEXT_LARGE = dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
DEFAULT_VISION_FEATURE_LAYERS = (3, 6, 9, 12, 15, 18, 20, 23)
# The keyword arguments of MGMConfigMixin._init_mgm (taken out before the decoder config's).
_MGM_FIELDS = (
    "mm_hidden_size",
    "mm_hidden_size_aux",
    "mm_projector_type",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "image_size_aux",
    "image_grid",
    "image_global",
    "vision_tower_config",
    "vision_tower_aux_config",
    "vision_feature_layers",
)


class MGMConfigMixin:
    """MGM's fields on top of a decoder config (module docstring)."""

    def _init_mgm(
        self,
        *,
        mm_hidden_size: int | None = None,
        mm_hidden_size_aux: int | None = None,
        mm_projector_type: str = "mlp2x_gelu",
        mm_vision_select_layer: int = -2,
        mm_vision_select_feature: str = "patch",
        image_size_aux: int = 768,
        image_grid: int = 1,
        image_global: bool = False,
        vision_tower_config: dict[str, Any] | None = None,
        vision_tower_aux_config: dict[str, Any] | None = None,
        vision_feature_layers: tuple[int, ...] | list[int] = DEFAULT_VISION_FEATURE_LAYERS,
    ) -> None:
        self.vision_tower_config = dict(vision_tower_config or CLIP_L_336)
        aux = dict(vision_tower_aux_config or CONVNEXT_LARGE)
        self.vision_tower_aux_config = {k: list(v) for k, v in aux.items()}
        width = self.vision_tower_config["hidden_size"]
        self.mm_hidden_size = mm_hidden_size or width
        self.mm_hidden_size_aux = mm_hidden_size_aux or sum(aux["dims"])
        if self.mm_hidden_size != width or self.mm_hidden_size_aux != sum(aux["dims"]):
            raise ValueError(
                f"mm_hidden_size {self.mm_hidden_size} / mm_hidden_size_aux "
                f"{self.mm_hidden_size_aux} do not match the towers ({width}, "
                f"{sum(aux['dims'])}); set vision_tower_config / vision_tower_aux_config"
            )
        if mm_projector_type != "mlp2x_gelu" or mm_vision_select_feature != "patch":
            raise ValueError(
                f"mm_projector_type={mm_projector_type!r}, mm_vision_select_feature="
                f"{mm_vision_select_feature!r}: only 'mlp2x_gelu' and 'patch' (the released "
                "MGM models') are implemented"
            )
        self.mm_projector_type = mm_projector_type
        self.mm_vision_select_layer = mm_vision_select_layer
        self.mm_vision_select_feature = mm_vision_select_feature
        self.image_size_aux = image_size_aux
        self.image_grid = image_grid
        self.image_global = image_global
        self.vision_feature_layers = list(vision_feature_layers)

    def clip_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(**self.vision_tower_config)

    @property
    def clip_image_size(self) -> int:
        return int(self.vision_tower_config["image_size"])

    @property
    def clip_grid(self) -> int:
        """Side of one CLIP view's token grid (24 for 336 / 14)."""
        return self.clip_image_size // int(self.vision_tower_config["patch_size"])

    @property
    def num_views(self) -> int:
        """CLIP views per image: 1, or grid^2 crops (+ 1 global view)."""
        if self.image_grid == 1:
            return 1
        return self.image_grid**2 + int(self.image_global)


class MGMLlamaConfig(MGMConfigMixin, LlamaConfig):
    """MGM on LLaMA / Vicuna (MGM-7B, MGM-7B-HD)."""

    model_type = "mgm"

    def __init__(self, **kwargs: Any) -> None:
        mgm = {k: kwargs.pop(k) for k in _MGM_FIELDS if k in kwargs}
        super().__init__(**kwargs)
        self._init_mgm(**mgm)


class MGMGemmaConfig(MGMConfigMixin, GemmaConfig):
    """MGM on Gemma (MGM-2B)."""

    model_type = "mgm_gemma"

    def __init__(self, **kwargs: Any) -> None:
        mgm = {k: kwargs.pop(k) for k in _MGM_FIELDS if k in kwargs}
        super().__init__(**kwargs)
        self._init_mgm(**mgm)
