"""Mini-Gemini (MGM): stock transformers decoders (Gemma, LLaMA) that also hold MGM's vision parts.

State-dict names and shapes equal the released checkpoints' (tests/fixtures/mgm holds the key
lists of F-LMM's vendored MGM built at the released sizes): the decoder as `model.*` and `lm_head`,
and under `model.` the two towers (`vision_tower`, `vision_tower_aux`), the mining projectors
(`vlm_uni_{query,aux,val}_projector`, LayerNorm + Linear each) and `mm_projector` (Linear, GELU,
Linear). The decoder's own forward is untouched; the image path is `encode_images`.

Image path (upstream's `encode_images`, and F-LMM's `_process_image` for the CLIP views): the
processor's square image at `image_size_aux` (A) goes to the ConvNeXt as is; the CLIP views are
that image resized bilinearly to s * grid (s = 336), then cut into grid x grid crops row-major, plus
(HD) a global view resized from it to s. Every view's CLIP tokens (layer `mm_vision_select_layer`,
CLS dropped) mine their ConvNeXt patches (crops: their part of the map; global view: the map
resized by 1 / grid), token + mined feature goes through `mm_projector`. Image tokens: the global
view's first (HD), then the crops'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GemmaForCausalLM, GemmaModel, LlamaForCausalLM, LlamaModel
from transformers.models.gemma.modeling_gemma import GemmaPreTrainedModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from hg_lmm.lmm.mgm.configuration import MGMConfigMixin, MGMGemmaConfig, MGMLlamaConfig
from hg_lmm.lmm.mgm.vision import CLIPTower, ConvNeXtTower, mine_patches


def _norm_linear(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(c_in), nn.Linear(c_in, c_out))


class MGMVisionMixin:
    """MGM's vision parts on a decoder model (`model.*` names) and the image path."""

    config: MGMConfigMixin

    def _init_vision(self, config: MGMConfigMixin) -> None:
        c, c_aux, d = config.mm_hidden_size, config.mm_hidden_size_aux, config.hidden_size
        self.vision_tower = CLIPTower(config.clip_config())
        self.vision_tower_aux = ConvNeXtTower(**config.vision_tower_aux_config)
        self.mm_projector = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
        self.vlm_uni_query_projector = _norm_linear(c, c)
        self.vlm_uni_aux_projector = _norm_linear(c_aux, c)
        self.vlm_uni_val_projector = _norm_linear(c_aux, c)

    def clip_views(self, images_aux: torch.Tensor) -> torch.Tensor:
        """[B, 3, A, A] -> CLIP views [B, P, 3, s, s]: the grid x grid crops row-major, then (HD)
        the global view; P = 1 without a grid."""
        cfg = self.config
        s, grid = cfg.clip_image_size, cfg.image_grid
        x = F.interpolate(images_aux, size=(s * grid, s * grid), mode="bilinear")
        if grid == 1:
            return x[:, None]
        b = x.shape[0]
        crops = x.reshape(b, 3, grid, s, grid, s).permute(0, 2, 4, 1, 3, 5)
        views = [crops.reshape(b, grid * grid, 3, s, s)]
        if cfg.image_global:
            views.append(F.interpolate(x, size=(s, s), mode="bilinear")[:, None])
        return torch.cat(views, dim=1)

    def _mine(self, queries: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return mine_patches(
            queries,
            aux,
            query_proj=self.vlm_uni_query_projector,
            key_proj=self.vlm_uni_aux_projector,
            value_proj=self.vlm_uni_val_projector,
        )

    def encode_images(
        self, images_aux: torch.Tensor, feature_layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image tokens and HG-LMM's multi-layer vision features, one pass of each tower.

        Shapes: images_aux [B, 3, A, A] -> (image embeddings [B, N, D] with N = P * g*g, and,
        when `feature_layers` are given, vision features [B, V, g*g, D]: each selected CLIP block
        of the global view (the only view without a grid), CLS dropped, plus its mined ConvNeXt
        features, through `mm_projector`; else None).
        """
        cfg = self.config
        b, grid = images_aux.shape[0], cfg.image_grid
        views = self.clip_views(images_aux)
        states = self.vision_tower(views.flatten(0, 1))
        tokens = states[cfg.mm_vision_select_layer][:, 1:].unflatten(0, (b, views.shape[1]))
        aux = self.vision_tower_aux(images_aux).to(tokens.dtype)
        c_aux, h, w = aux.shape[1:]
        if grid == 1:
            queries, aux_global = tokens[:, 0], aux
            parts = [queries + self._mine(queries, aux)]
        else:
            crops = tokens[:, : grid * grid].flatten(0, 1)
            aux_crops = aux.reshape(b, c_aux, grid, h // grid, grid, w // grid)
            aux_crops = aux_crops.permute(0, 2, 4, 1, 3, 5).reshape(-1, c_aux, h // grid, w // grid)
            mined = (crops + self._mine(crops, aux_crops)).unflatten(0, (b, grid * grid))
            parts = [mined.flatten(1, 2)]
            aux_global = None
            if cfg.image_global:
                queries = tokens[:, -1]
                aux_global = F.interpolate(
                    aux.float(), scale_factor=1 / grid, mode="bilinear", align_corners=False
                ).to(aux.dtype)
                parts.insert(0, queries + self._mine(queries, aux_global))
        embeds = self.mm_projector(torch.cat(parts, dim=1))
        if not feature_layers:
            return embeds, None
        if aux_global is None:
            raise ValueError("vision features need a global view (image_grid 1 or image_global)")
        view = views.shape[1] - 1  # the global view (or the only one)
        per_layer = []
        for i in feature_layers:
            q = states[i + 1].unflatten(0, (b, views.shape[1]))[:, view, 1:]
            per_layer.append(self.mm_projector(q + self._mine(q, aux_global)))
        return embeds, torch.stack(per_layer, dim=1)


class MGMLlamaModel(MGMVisionMixin, LlamaModel):
    config_class = MGMLlamaConfig

    def __init__(self, config: MGMLlamaConfig) -> None:
        LlamaModel.__init__(self, config)
        self._init_vision(config)


class MGMGemmaModel(MGMVisionMixin, GemmaModel):
    config_class = MGMGemmaConfig

    def __init__(self, config: MGMGemmaConfig) -> None:
        GemmaModel.__init__(self, config)
        self._init_vision(config)


class MGMLlamaForCausalLM(LlamaForCausalLM):
    """MGM-7B / MGM-7B-HD: `LlamaForCausalLM` whose `model` is `MGMLlamaModel`."""

    config_class = MGMLlamaConfig

    def __init__(self, config: MGMLlamaConfig) -> None:
        # LlamaForCausalLM.__init__ with the decoder class swapped (building the stock one first
        # would allocate a second 7B decoder).
        LlamaPreTrainedModel.__init__(self, config)
        self.model = MGMLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class MGMGemmaForCausalLM(GemmaForCausalLM):
    """MGM-2B: `GemmaForCausalLM` whose `model` is `MGMGemmaModel`."""

    config_class = MGMGemmaConfig

    def __init__(self, config: MGMGemmaConfig) -> None:
        GemmaPreTrainedModel.__init__(self, config)
        self.model = MGMGemmaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
