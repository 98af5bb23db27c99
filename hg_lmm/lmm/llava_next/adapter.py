"""LLaVA-NeXT (v1.6) as a frozen LMM, on the stock `transformers.LlavaNextForConditionalGeneration`.

No patched source. The image tokens are assembled from the model's own parts exactly as its
forward does (transformers 4.39.1): every view through the CLIP tower, the projector, then the
base view's g x g tokens followed by the crops' tokens stitched into one grid, unpadded
(`unpad_image`) and given the `image_newline` column, row-major. The selected CLIP layers of the
*base* view (CLS dropped), through the same projector, are the multi-layer vision features.

Attention reading (docs/architecture.md, "LLaVA-NeXT"): per caption token, the attention over the
base grid [g, g] and over the fine grid [h, w] (newline column dropped) are both resized
bilinearly to one grid and stacked, coarse layers first, as F-LMM's `FrozenLlavaNextSAM._forward`
does: `attn` is [2L, H, T, h', w'], so a phrase's prior has 2*L*H channels.

- attention_grid="fine" (F-LMM's, the U-Net+SAM head): the common grid is the fine one, whose
  size follows the image's aspect ratio; the head's meta places the image on the whole grid.
- attention_grid="base" (the HG head): the common grid is the base g x g one, which like the base
  view covers the whole image, stretched to a square; the head sees the base view (S x S) and
  its vision features, so every HG size stays fixed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    unpad_image,
)

from hg_lmm.lmm.adapter import (
    Answer,
    FeatureTensors,
    FrozenLMMAdapter,
    _pad_right,
)
from hg_lmm.lmm.base import LMMDims, LMMFeatures
from hg_lmm.lmm.capture import RowCapture
from hg_lmm.lmm.llava.adapter import DEFAULT_VISION_LAYERS, LlavaAdapter
from hg_lmm.lmm.llava_next.processing import (
    CHAT_TEMPLATES,
    IMAGE_TOKEN,
    LlavaNextImageProcessor,
    llava_next_train_prompt,
)

ATTENTION_GRIDS = ("fine", "base")


@dataclass
class AnyResImages:
    """B any-resolution images as the vision tower takes them.

    Fields:
      views: B tensors [P_b, 3, S, S] (the base view, then the crops row-major).
      image_sizes: B original sizes (h, w), which fix each image's crop grid and unpadding.
    """

    views: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]


@dataclass(frozen=True)
class TokenLayout:
    """Where one image's N = g*g + h*(w+1) tokens lie: the base grid (g, g), then the fine grid
    (h, w) row-major, each row followed by one newline token."""

    base: tuple[int, int]
    fine: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return self.base[0] * self.base[1] + self.fine[0] * (self.fine[1] + 1)


class LlavaNextAdapter(FrozenLMMAdapter):
    """Frozen LLaVA-NeXT.

    Arguments:
      lmm: a `LlavaNextForConditionalGeneration` with a Llama (Vicuna) or Mistral decoder (load it
        with `attn_implementation="sdpa"`; the attention rows are recorded alongside).
      tokenizer: its tokenizer (must know `<image>`).
      processor: image -> (pixel_values [P, 3, S, S], meta), `LlavaNextImageProcessor`.
      template: "vicuna" or "mistral", xtuner's prompt template the heads were trained with.
      attention_grid: "fine" (F-LMM's reading, for the U-Net+SAM head) or "base" (the HG head);
        module docstring.
      vision_layers: CLIP blocks (0-based) whose base-view outputs form the vision features.

    `dims.attn_maps` is 2 (coarse and fine maps per layer and head); with "fine", `dims.grid` is
    the base grid g and `dims.fixed_grid` is False. Features: attn [2L, H, T, h', w'], hidden
    [L, T, D], vision [V, g*g, D], pixel_values the base view [3, S, S], meta the head's record
    (image on the whole attention grid) with the processor's under "anyres".
    The reference feature path (`eager_features=True`) is not offered: the tests check the
    captured rows against the stock model's own eager forward instead.
    """

    def __init__(
        self,
        *,
        lmm: torch.nn.Module,
        tokenizer: Any,
        processor: Callable[[Image.Image], tuple[torch.Tensor, dict]],
        template: str,
        attention_grid: str = "fine",
        vision_layers: Sequence[int] = DEFAULT_VISION_LAYERS,
    ) -> None:
        cfg = lmm.config
        vcfg, tcfg = cfg.vision_config, cfg.text_config
        depth = vcfg.num_hidden_layers
        if any(not 0 <= i < depth for i in vision_layers):
            raise ValueError(
                f"vision_layers {tuple(vision_layers)} do not fit the {depth}-block CLIP tower; "
                "pass vision_layers= with indices below the tower depth"
            )
        if cfg.vision_feature_select_strategy != "default":
            raise ValueError(
                "only vision_feature_select_strategy='default' (CLS dropped) is supported"
            )
        if attention_grid not in ATTENTION_GRIDS:
            raise ValueError(
                f"attention_grid={attention_grid!r}; expected one of {ATTENTION_GRIDS}"
            )
        self.train_prompt_text = llava_next_train_prompt(template)  # validates the template
        dims = LMMDims(
            num_layers=tcfg.num_hidden_layers,
            num_heads=tcfg.num_attention_heads,
            hidden_size=tcfg.hidden_size,
            grid=vcfg.image_size // vcfg.patch_size,
            vision_channels=tcfg.hidden_size,
            vision_layers=tuple(vision_layers),
            image_size=vcfg.image_size,
            attn_maps=2,
            fixed_grid=attention_grid == "base",
        )
        super().__init__(lmm=lmm, tokenizer=tokenizer, dims=dims, eager_features=False)
        self.processor = processor
        self.template = template
        self.attention_grid = attention_grid
        self.image_token_id = cfg.image_token_index
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != self.image_token_id:
            raise ValueError(
                f"the tokenizer's {IMAGE_TOKEN} id differs from config.image_token_index"
            )

    # --- what the base class asks for --------------------------------------------------------

    @property
    def language_model(self) -> torch.nn.Module:
        return self.lmm.language_model

    @property
    def train_prompt(self) -> str:
        return self.train_prompt_text

    def chat_prompt(self, question: str) -> str:
        return CHAT_TEMPLATES[self.template].format(question=question)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, dict]:
        return self.processor(image)

    # The one `<image>` token becomes the N image embeddings, as for LLaVA-1.5.
    embed_inputs = LlavaAdapter.embed_inputs

    def collate_pixels(self, pixels: Sequence[torch.Tensor], metas: Sequence[dict]) -> AnyResImages:
        """B samples' views [P_b, 3, S, S] and processor metas -> `AnyResImages`."""
        sizes = []
        for px, meta in zip(pixels, metas):
            if px.dim() != 4 or "ori_shape" not in meta:
                raise ValueError(
                    f"LLaVA-NeXT takes pixel_values [P, 3, S, S] with the processor's meta "
                    f"(ori_shape), got {tuple(px.shape)} and meta keys {sorted(meta)}; preprocess "
                    "with LlavaNextImageProcessor"
                )
            sizes.append((int(meta["ori_shape"]["height"]), int(meta["ori_shape"]["width"])))
        return AnyResImages(views=list(pixels), image_sizes=sizes)

    def _pixels(self, pixel_values: AnyResImages) -> AnyResImages:
        views = [v.to(self.device, self.dtype) for v in pixel_values.views]
        return AnyResImages(views=views, image_sizes=list(pixel_values.image_sizes))

    def encode_images(
        self, pixel_values: AnyResImages
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """B images -> (decoder image embeddings B x [N_b, D], vision features B x [V, g*g, C])."""
        embeds, vision, _ = self.encode_anyres(pixel_values)
        return embeds, vision

    def encode_anyres(
        self, images: AnyResImages
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[TokenLayout]]:
        """One vision pass over every view of B images.

        Returns per image: the decoder image embeddings [N_b, D] (base tokens, then the fine
        grid with its newline column), the vision features [V, g*g, C] of the base view, and
        the `TokenLayout` of its N_b tokens.
        """
        cfg = self.lmm.config
        s, g = self.dims.image_size, self.dims.grid
        counts = [int(v.shape[0]) for v in images.views]
        out = self.lmm.vision_tower(torch.cat(images.views), output_hidden_states=True)
        states = out.hidden_states  # [0] = embeddings, [i + 1] = output of block i
        project = self.lmm.multi_modal_projector
        tokens = project(states[cfg.vision_feature_layer][:, 1:]).split(counts)
        first = torch.tensor([0, *counts[:-1]]).cumsum(0).tolist()  # each image's base view
        picked = torch.stack([states[i + 1][first, 1:] for i in self.dims.vision_layers], dim=1)
        vision = list(project(picked))
        embeds, layouts = [], []
        for feats, size in zip(tokens, images.image_sizes):
            rows, cols = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, s)
            if feats.shape[0] != 1 + rows * cols:
                raise ValueError(
                    f"an image of size {size} needs 1 + {rows}x{cols} views for the model's "
                    f"image_grid_pinpoints, got {feats.shape[0]}; preprocess it with the "
                    "LlavaNextImageProcessor of the same pinpoints"
                )
            fine = feats[1:].view(rows, cols, g, g, -1).permute(4, 0, 2, 1, 3)
            fine = unpad_image(fine.flatten(1, 2).flatten(2, 3), size)  # [D, h, w]
            newline = self.lmm.image_newline[:, None, None].expand(*fine.shape[:-1], 1)
            fine_tokens = torch.cat([fine, newline.to(fine.dtype)], dim=-1).flatten(1, 2).T
            embeds.append(torch.cat([feats[0], fine_tokens]))
            layouts.append(TokenLayout(base=(g, g), fine=(int(fine.shape[1]), int(fine.shape[2]))))
        return embeds, vision, layouts

    # --- attention reading -------------------------------------------------------------------

    def read_attention(self, attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """F-LMM's reading of one image's attention rows.

        attn: [L, H, T, N] over the image tokens of `layout`.
        Returns [2L, H, T, h', w'] float32: the base-grid maps, then the fine-grid maps (newline
        column dropped), both resized bilinearly to the fine grid (h, w) or, with
        attention_grid="base", to the base grid (g, g).
        """
        (gh, gw), (fh, fw) = layout.base, layout.fine
        if attn.shape[-1] != layout.num_tokens:
            raise ValueError(f"attention over {attn.shape[-1]} tokens, layout has {layout}")
        coarse = attn[..., : gh * gw].unflatten(-1, (gh, gw)).float()
        fine = attn[..., gh * gw :].unflatten(-1, (fh, fw + 1))[..., :-1].float()
        size = (fh, fw) if self.attention_grid == "fine" else (gh, gw)
        maps = [_resize(coarse, size), _resize(fine, size)]
        return torch.cat(maps, dim=0)

    # --- features ---------------------------------------------------------------------------

    @torch.no_grad()
    def features_batch(
        self,
        input_ids: Sequence[torch.Tensor],
        pixel_values: AnyResImages,
        queries: Sequence[torch.Tensor],
        dtype: torch.dtype | None = torch.float32,
    ) -> list[FeatureTensors]:
        """`FrozenLMMAdapter.features_batch` for images whose token counts differ: one vision
        pass, one right-padded decoder pass; per sample (attn [2L, H, R_b, h', w'], hidden
        [L, R_b, D], vision [V, g*g, C]) in `dtype` (None: the LMM's own)."""
        if not (len(input_ids) == len(queries) == len(pixel_values.views)):
            raise ValueError(
                f"got {len(input_ids)} token sequences, {len(pixel_values.views)} images and "
                f"{len(queries)} queries; pass one of each per sample"
            )
        dtype = dtype or self.dtype
        embeds, vision, layouts = self.encode_anyres(self._pixels(pixel_values))
        inputs = [self.embed_inputs(ids.to(self.device), e) for ids, e in zip(input_ids, embeds)]
        rows = [self._query_positions(x, q) for x, q in zip(inputs, queries)]
        padded_embeds, key_mask = _pad_right([x.embeds[0] for x in inputs])
        padded = not bool(key_mask.all())
        # Images with fewer tokens repeat column 0 (a real key) and drop it afterwards.
        columns = _pad_right([x.image_positions for x in inputs])[0]
        with RowCapture(
            self.language_model.get_decoder(),
            rows=_pad_right(rows)[0],
            columns=columns,
            key_mask=key_mask if padded else None,
            release_cache=True,
        ) as capture:
            self.language_model.get_decoder()(
                inputs_embeds=padded_embeds,
                attention_mask=key_mask.long() if padded else None,
                use_cache=True,
                return_dict=True,
            )
        attn, hidden = capture.attn, capture.hidden
        del capture
        out = []
        for b, (r, layout) in enumerate(zip(rows, layouts)):
            maps = self.read_attention(attn[:, b, :, : len(r), : layout.num_tokens], layout)
            out.append(
                (maps.to(dtype), hidden[:, b, : len(r)].to(dtype, copy=True), vision[b].to(dtype))
            )
        return out

    def head_features(self, features: LMMFeatures) -> LMMFeatures:
        """The processor's views and meta -> what the heads read: the base view and a meta record
        that puts the image on the whole attention grid (no padding there: the fine grid is
        unpadded, the base view stretched), with the processor's record under "anyres"."""
        meta = features.meta
        if "anyres" in meta:
            return features
        if self.attention_grid == "fine":
            shape = dict(meta["image_shape"])
        else:
            shape = {"height": self.dims.image_size, "width": self.dims.image_size}
        head_meta = {
            "padding": dict.fromkeys(
                ("before_height", "after_height", "before_width", "after_width"), 0
            ),
            "image_shape": shape,
            "padded_shape": dict(shape),
            "anyres": meta,
        }
        pixels = features.pixel_values
        base = pixels[0] if pixels.dim() == 4 else pixels
        return dataclasses.replace(features, meta=head_meta, pixel_values=base)

    # extract_group falls back to extract_batch (saying so): the shared KV-cached prompt is not
    # wired for the any-resolution layout, whose image tokens come from `encode_anyres`.
    shares_prefix = False

    def extract_batch(
        self, samples: Sequence[dict[str, Any]], dtype: torch.dtype | None = torch.float32
    ) -> list[LMMFeatures]:
        """`FrozenLMMAdapter.extract_batch`, with each sample's features as the heads read them
        (`head_features`). A sample gives `image` or `pixel_values` [P, 3, S, S] + `meta`."""
        return [self.head_features(f) for f in super().extract_batch(samples, dtype)]

    # --- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, image: Image.Image, question: str, max_new_tokens: int = 64) -> Answer:
        """Answer a question greedily and return the features of the generated tokens, recorded
        during the KV-cache generation (equal to `extract` of prompt + answer)."""
        pixel_values, meta = self.preprocess(image)
        prompt_ids = torch.tensor(self.tokenizer(self.chat_prompt(question)).input_ids)
        images = self._pixels(self.collate_pixels([pixel_values], [meta]))
        embeds, vision, layouts = self.encode_anyres(images)
        inputs = self.embed_inputs(prompt_ids.to(self.device), embeds[0])
        decoder = self.language_model.get_decoder()
        with RowCapture(
            decoder, columns=inputs.image_positions[None], from_position=inputs.embeds.shape[1]
        ) as capture:
            out = self._generate(inputs, max_new_tokens)
            new = self._new_tokens(out)
            # `generate` never feeds its last token back; one cached step records its rows.
            if len(new) and capture.num_rows == len(new) - 1:
                last = self.language_model.get_input_embeddings()(new[-1:])[None]
                decoder(inputs_embeds=last, past_key_values=out.past_key_values, use_cache=True)
        t = len(new)
        if t == 0:
            raise ValueError(f"the LMM generated an empty answer to {question!r}")
        attn = self.read_attention(capture.attn[:, 0, :, :t], layouts[0])
        features = LMMFeatures(
            attn=attn,
            hidden=capture.hidden[:, 0, :t].float(),
            vision=vision[0].float(),
            pixel_values=pixel_values.float(),
            mask_ids=torch.full((t,), -1, dtype=torch.long),
            meta=meta,
            token_ids=new.cpu(),
        )
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Answer(text=text, token_ids=new.cpu(), features=self.head_features(features))

    def generate_ids(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("LLaVA-NeXT generates through `answer`")

    def generate_with_features(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("LLaVA-NeXT generates through `answer`")


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[L, H, T, h, w] -> [L, H, T, *size], bilinear (align_corners=False, as F.interpolate's
    default that F-LMM uses); a no-op at the same size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    L, H, T = maps.shape[:3]
    out = F.interpolate(maps.flatten(0, 1), size=size, mode="bilinear")
    return out.view(L, H, T, *size)


def load_processor(model_path: str | Path, lmm_config: Any) -> LlavaNextImageProcessor:
    """The processor of a LLaVA-NeXT repo: size, pinpoints, mean and std from its
    `preprocessor_config.json` when present, else from the model config and CLIP's defaults."""
    settings: dict[str, Any] = {
        "image_size": lmm_config.vision_config.image_size,
        "grid_pinpoints": lmm_config.image_grid_pinpoints,
    }
    pre = Path(model_path) / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        for ours, theirs in (
            ("grid_pinpoints", "image_grid_pinpoints"),
            ("image_mean", "image_mean"),
            ("image_std", "image_std"),
            ("rescale_factor", "rescale_factor"),
        ):
            if theirs in cfg:
                settings[ours] = cfg[theirs]
        if "crop_size" in cfg:
            settings["image_size"] = cfg["crop_size"]["height"]
    return LlavaNextImageProcessor(**settings)


def build_llava_next_adapter(
    *,
    model_path: str | Path,
    template: str,
    attention_grid: str = "fine",
    vision_layers: Sequence[int] = DEFAULT_VISION_LAYERS,
    torch_dtype: str | torch.dtype = "bfloat16",
) -> LlavaNextAdapter:
    """Load a LLaVA-NeXT repo (hub id or local folder) with SDPA attention, its tokenizer and
    the any-resolution processor (`load_processor`).

    template: "vicuna" (llava-v1.6-vicuna-7b-hf) or "mistral" (llava-v1.6-mistral-7b-hf).
    attention_grid: "fine" (U-Net+SAM head, F-LMM's) or "base" (HG head)."""
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    lmm = LlavaNextForConditionalGeneration.from_pretrained(
        model_path, torch_dtype=dtype, attn_implementation="sdpa", low_cpu_mem_usage=True
    )
    return LlavaNextAdapter(
        lmm=lmm,
        tokenizer=AutoTokenizer.from_pretrained(model_path),
        processor=load_processor(model_path, lmm.config),
        template=template,
        attention_grid=attention_grid,
        vision_layers=vision_layers,
    )
