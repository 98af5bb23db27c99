"""DeepSeek-VL (`MultiModalityCausalLM`): vision model + aligner + a stock `LlamaForCausalLM`.

State-dict names and shapes equal the released checkpoints', so `from_pretrained` on a local copy
of deepseek-ai/deepseek-vl-{1.3b,7b}-chat loads strictly. Besides the upstream
`prepare_inputs_embeds`, the model exposes HG-LMM's multi-layer vision features
(`multilayer_vision_features`), computed over the towers' public modules; no upstream source is
patched.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from hg_lmm.lmm.deepseek_vl.aligner import MlpProjector
from hg_lmm.lmm.deepseek_vl.configuration import MultiModalityConfig
from hg_lmm.lmm.deepseek_vl.vision import HybridVisionTower, build_vision_model


class MultiModalityPreTrainedModel(PreTrainedModel):
    config_class = MultiModalityConfig
    base_model_prefix = "multi_modality"
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    # The attention choice is handed down to the Llama decoder, which supports both.
    _supports_sdpa = True
    _supports_flash_attn_2 = True

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Each part initialises itself when built (timm/SAM/Llama); a released model loads every
        # tensor from its checkpoint, so there is nothing to (re)initialise here.
        return


class MultiModalityCausalLM(MultiModalityPreTrainedModel):
    """DeepSeek-VL.

    Arguments:
      config: a MultiModalityConfig (the released `config.json` loads into it).

    Submodules (released names): `vision_model` (CLIPVisionTower or HybridVisionTower), `aligner`
    (MlpProjector), `language_model` (LlamaForCausalLM). The adapter loads it with
    `attn_implementation="sdpa"` and records the attention rows it needs alongside
    (hg_lmm.lmm.capture); `output_attentions=True` falls back to eager. As upstream, generate
    with `language_model.generate(inputs_embeds=prepare_inputs_embeds(...), ...)`.
    """

    def __init__(self, config: MultiModalityConfig) -> None:
        requested = config._attn_implementation_internal
        super().__init__(config)
        language_config = config.language_config
        # The decoder uses the attention implementation asked of (or resolved for) the whole model,
        # unless its own config already fixed one and nothing was asked.
        if requested is not None or language_config._attn_implementation_internal is None:
            language_config._attn_implementation = config._attn_implementation
        self.vision_model = build_vision_model(
            config.vision_config.cls, config.vision_config.params
        )
        self.aligner = MlpProjector(config.aligner_config.params)
        self.language_model = LlamaForCausalLM(language_config)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @property
    def is_hybrid(self) -> bool:
        return isinstance(self.vision_model, HybridVisionTower)

    def _vision_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got shape {tuple(images.shape)}")
        weight = next(self.vision_model.parameters())
        return images.to(device=weight.device, dtype=weight.dtype)

    # --- images ---------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder receives for each image: [B, 3, S, S] -> [B, N, D]."""
        return self.aligner(self.vision_model(self._vision_input(images)))

    def encode_images_with_features(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One tower pass: (decoder image embeddings [B, N, D], vision features [B, V, N, C])."""
        return self._vision_features(images, with_embeds=True)

    def multilayer_vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """HG-LMM's multi-layer vision features: [B, 3, S, S] -> [B, V, N, C].

        V = len(config.vision_feature_layers) (8 for the released models).
        - One SigLIP tower (1.3B): each selected block's raw output (no final norm), each
          through the aligner.
        - Hybrid (7B): each selected SAM block through the high-res tower's `neck`, a bilinear
          resize and `downsamples` ([N, 1024]), paired with a SigLIP block, through the hybrid
          aligner (high_up_proj, low_up_proj, concat, layers).
        Only the blocks up to the deepest selected one run.
        """
        return self._vision_features(images, with_embeds=False)[1]

    def _vision_features(
        self, images: torch.Tensor, with_embeds: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        low_layers, high_layers = self.config.feature_layers()
        x = self._vision_input(images)
        if self.is_hybrid:
            final, high, low = self.vision_model.forward_with_intermediates(
                x, high_layers, low_layers, with_final=with_embeds
            )
            feats = self._align_layers(list(zip(high, low)))
        else:
            final, low = self.vision_model.forward_with_intermediates(
                x, low_layers, with_final=with_embeds
            )
            feats = self._align_layers(low)
        embeds = self.aligner(final) if final is not None else None
        return embeds, feats

    def _align_layers(self, layers: list[Any]) -> torch.Tensor:
        """The aligner on each selected layer ([B, N, C_in], or a (high, low) pair), written into
        one [B, V, N, C]: the values of aligning the stacked layers (the aligner works token by
        token), with one layer's MLP intermediates in memory at a time instead of V layers'."""
        first = self.aligner(layers[0])
        out = first.new_empty(first.shape[0], len(layers), *first.shape[1:])
        out[:, 0] = first
        for i, layer in enumerate(layers[1:], start=1):
            out[:, i] = self.aligner(layer)
        return out

    # --- decoder inputs (upstream semantics) ------------------------------------------------

    def prepare_inputs_embeds(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        images_seq_mask: torch.BoolTensor,
        images_emb_mask: torch.BoolTensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Token embeddings with the image embeddings written into the image-token slots.

        Shapes: input_ids [b, T], pixel_values [b, n, 3, S, S], images_seq_mask [b, T] (True at
        image tokens), images_emb_mask [b, n, N] (True for image embeddings to use; all when None)
        -> [b, T, D]. Unlike upstream, `input_ids` is not modified in place (negative ids, used by
        some callers for image slots, are read as 0).
        """
        if pixel_values.dim() != 5:
            raise ValueError(
                f"pixel_values must be [b, n, 3, S, S], got {tuple(pixel_values.shape)}"
            )
        b, n = pixel_values.shape[:2]
        image_embeds = self.encode_images(pixel_values.flatten(0, 1))
        image_embeds = image_embeds.reshape(b, n * image_embeds.shape[1], image_embeds.shape[2])
        if images_emb_mask is None:
            images_emb_mask = torch.ones(image_embeds.shape[:2], dtype=torch.bool)
        images_emb_mask = images_emb_mask.reshape(b, -1).to(image_embeds.device)
        images_seq_mask = images_seq_mask.to(image_embeds.device).bool()
        n_slots, n_embeds = int(images_seq_mask.sum()), int(images_emb_mask.sum())
        if n_slots != n_embeds:
            raise ValueError(
                f"{n_slots} image-token slots in images_seq_mask but {n_embeds} image embeddings "
                "selected by images_emb_mask; each <image_placeholder> must expand to "
                f"{self.config.num_image_tokens} tokens"
            )
        embeds = self.get_input_embeddings()(input_ids.clamp(min=0))
        picked = image_embeds[images_emb_mask].to(embeds.dtype)
        return embeds.masked_scatter(images_seq_mask.unsqueeze(-1), picked)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        images_seq_mask: torch.BoolTensor | None = None,
        images_emb_mask: torch.BoolTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Decoder forward; with `pixel_values`, the image embeddings are spliced in first.

        Shapes as in `prepare_inputs_embeds`; other keyword arguments go to LlamaForCausalLM.
        """
        if pixel_values is not None:
            if inputs_embeds is not None:
                raise ValueError("pass either pixel_values (with input_ids) or inputs_embeds")
            if input_ids is None or images_seq_mask is None:
                raise ValueError("pixel_values needs input_ids and images_seq_mask")
            inputs_embeds = self.prepare_inputs_embeds(
                input_ids, pixel_values, images_seq_mask, images_emb_mask
            )
            input_ids = None
        return self.language_model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
