"""F-LMM's SAM refiner: SAM re-predicts each coarse mask from mask, box and text prompts.

See docs/architecture.md ("U-Net + SAM head"). Built on the `segment_anything` package as
published (no vendored copy): `SAMRefiner.model` is a `segment_anything.modeling.Sam`, so the
checkpoint names are `sam.model.prompt_encoder.*` and `sam.model.mask_decoder.*` once the refiner
sits at `head.sam`. The image encoder is frozen, always in eval mode, run without autograd and
left out of the trainable state (see `hg_lmm.utils.checkpoint.trainable_state_dict`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from hg_lmm.utils.build import build
from hg_lmm.utils.images import ImageLike, rgb_array

SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


def build_sam(*, variant: str = "vit_l", checkpoint: str | os.PathLike | None = None) -> Sam:
    """segment_anything's `Sam` of `variant` ("vit_h", "vit_l", "vit_b").

    checkpoint: the official SAM weights (e.g. checkpoints/sam_vit_l_0b3195.pth), loaded strictly;
      they initialise the prompt encoder and mask decoder too (those are then fine-tuned). None
      leaves random weights, which only tests and shape checks want.
    """
    if variant not in SAM_CHECKPOINT_URLS:
        raise ValueError(
            f"unknown SAM variant {variant!r}; expected one of {sorted(SAM_CHECKPOINT_URLS)}"
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"SAM checkpoint {str(checkpoint)!r} not found; download "
            f"{SAM_CHECKPOINT_URLS[variant]} to that path (see checkpoints/README.md), "
            "or pass checkpoint=None for random weights"
        )
    sam = sam_model_registry[variant](checkpoint=None)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state, strict=True)
    return sam


@dataclass
class SAMImage:
    """An image resized for SAM's encoder, before normalisation and padding.

    Fields:
      pixels: [3, h, w] float32 RGB in 0..255, long side = the encoder's input size; (h, w) is
        SAM's `input_size`.
      original_size: (H, W) of the image the masks are predicted for.
      embeddings: [1, E, e, e] SAM image embeddings once encoded (`SAMRefiner.embed_image`), so
        that the frozen encoder runs once per image, e.g. not again when the trainable part is
        recomputed in the backward; None until then.
    """

    pixels: torch.Tensor
    original_size: tuple[int, int]
    embeddings: torch.Tensor | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


def prepare_sam_image(image: ImageLike, target_length: int) -> SAMImage:
    """Resize an original image so its long side is `target_length`, as SAM's predictor does.

    image: an `ImageLike` (`hg_lmm.utils.images.rgb_array` reads it).
    Returns a `SAMImage` ([3, h, w] float32 pixels, original (H, W)). The resize is
    segment_anything's `ResizeLongestSide.apply_image` (PIL bilinear), the transform SAM was
    trained with; safe to call in data-loader workers.
    """
    array = rgb_array(image)
    resized = ResizeLongestSide(target_length).apply_image(np.ascontiguousarray(array))
    pixels = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    return SAMImage(pixels=pixels, original_size=(int(array.shape[0]), int(array.shape[1])))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks, (x0, y0, x1 + 1, y1 + 1); the whole image for an empty mask.

    masks: [n, H, W] bool. Returns [n, 4] float32 in pixel units of the mask. The +1 keeps a
    one-pixel mask from giving a zero-area box, as in the reference.
    """
    n, height, width = masks.shape
    rows = masks.any(dim=2)  # [n, H]
    cols = masks.any(dim=1)  # [n, W]
    # argmax returns the first maximal index, so the flipped search finds the last one.
    y0 = rows.int().argmax(dim=1)
    y1 = height - 1 - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = width - 1 - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1 + 1, y1 + 1], dim=1).float()
    whole = torch.tensor([0.0, 0.0, width, height], device=masks.device)
    return torch.where(rows.any(dim=1)[:, None], boxes, whole)


class SAMRefiner(nn.Module):
    """Refine coarse phrase masks with SAM (vit_l for the released F-LMM checkpoints).

    Arguments:
      model: a segment_anything `Sam`, or its config dict, e.g.
        dict(type=build_sam, variant="vit_l", checkpoint="checkpoints/sam_vit_l_0b3195.pth").

    Per phrase, SAM's mask decoder gets (as F-LMM's SAM wrapper builds them):
      - the coarse logits as the dense mask prompt (`mask_prompts`);
      - the box of sigmoid(coarse) > 0.5 at the original size (`box_prompts`);
      - the phrase's text-token embeddings appended to the sparse (box) embeddings;
    with multimask_output=False, and its low-res output is postprocessed to the original size.

    The weights may be cast to bf16 (DeepSpeed does); the prompt encoder's positional matrix is
    put back to float32 on use, since segment_anything multiplies float32 coordinates with it.
    """

    def __init__(self, *, model: Sam | Mapping[str, Any]) -> None:
        super().__init__()
        self.model = build(model)
        if not isinstance(self.model, Sam):
            raise TypeError(
                f"SAMRefiner needs a segment_anything Sam or a config dict with type=build_sam, "
                f"got {type(self.model).__name__}"
            )
        self.model.image_encoder.requires_grad_(False)
        self.model.image_encoder.eval()
        self.transform = ResizeLongestSide(self.image_size)

    @property
    def image_size(self) -> int:
        """Side of SAM's square input frame (1024 for the official models)."""
        return int(self.model.image_encoder.img_size)

    @property
    def embed_dim(self) -> int:
        """Width of SAM's prompt tokens (256 for the official models)."""
        return int(self.model.prompt_encoder.embed_dim)

    def train(self, mode: bool = True) -> SAMRefiner:
        super().train(mode)
        # The frozen encoder stays in eval mode whatever the head does.
        self.model.image_encoder.eval()
        return self

    def prepare_image(self, image: ImageLike | SAMImage) -> SAMImage:
        """`prepare_sam_image` at this SAM's input size; a `SAMImage` is returned unchanged."""
        if isinstance(image, SAMImage):
            return image
        return prepare_sam_image(image, self.image_size)

    @torch.no_grad()
    def encode_image(self, image: ImageLike | SAMImage) -> torch.Tensor:
        """SAM image embeddings [1, E, e, e] (e = image_size / patch size), without autograd
        (those of a `SAMImage` that carries them already)."""
        image = self.prepare_image(image)
        if image.embeddings is not None:
            return image.embeddings
        x = image.pixels.to(self.model.device, torch.float32)[None]
        x = self.model.preprocess(x)  # normalise, zero-pad bottom/right to the square frame
        dtype = self.model.image_encoder.patch_embed.proj.weight.dtype
        return self.model.image_encoder(x.to(dtype))

    def embed_image(self, image: ImageLike | SAMImage) -> SAMImage:
        """The prepared image with its SAM embeddings attached (see `SAMImage.embeddings`)."""
        image = self.prepare_image(image)
        return replace(image, embeddings=self.encode_image(image))

    def mask_prompts(
        self, coarse_logits: torch.Tensor, input_size: tuple[int, int]
    ) -> torch.Tensor:
        """Coarse logits as SAM mask prompts.

        coarse_logits: [n, h, w] logits over the image (any resolution, the image's aspect).
        input_size: (h', w') of the resized image inside SAM's square frame.
        Returns [n, 1, m, m] in coarse_logits' dtype (m = the prompt encoder's mask input size,
        256 for 1024 inputs): the logits resized (bilinear) to `input_size`, padded bottom/right
        to the frame with min(-1, min logit) so the padding reads as background, then resized to
        m x m. Each resize runs in float32 and is cast back to the logits' dtype, as in the
        reference (this only matters in bf16). Differentiable in the logits.
        """
        dtype = coarse_logits.dtype
        pad_value = -1.0
        if coarse_logits.numel():
            pad_value = min(pad_value, float(coarse_logits.detach().min()))
        x = F.interpolate(coarse_logits[:, None].float(), size=input_size, mode="bilinear")
        x = F.pad(
            x.to(dtype),
            (0, self.image_size - input_size[1], 0, self.image_size - input_size[0]),
            value=pad_value,
        )
        size = self.model.prompt_encoder.mask_input_size
        return F.interpolate(x.float(), size=size, mode="bilinear").to(dtype)

    def box_prompts(
        self, coarse_logits: torch.Tensor, original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Box prompts [n, 4] float32 in SAM's input frame from coarse logits [n, h, w].

        The probabilities are resized (bilinear) to the original image size and thresholded at
        0.5; each mask's box is (x0, y0, x1 + 1, y1 + 1), or the whole image if it is empty. The
        box is scaled into SAM's frame in float64 and then rounded to float32, as the reference
        does (segment_anything's torch variant would scale in float32). No gradient.
        """
        with torch.no_grad():
            probs = coarse_logits.detach()[None].float().sigmoid()
            probs = F.interpolate(probs, size=original_size, mode="bilinear")[0]
            boxes = mask_boxes(probs > 0.5).cpu().numpy().astype(np.float64)
            boxes = self.transform.apply_boxes(boxes, original_size)
            return torch.as_tensor(boxes, dtype=torch.float32, device=coarse_logits.device)

    def forward(
        self,
        image: ImageLike | SAMImage,
        coarse_logits: torch.Tensor,
        text_embeds: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Refined logits [n, H, W] at the original image size.

        image: the original image (PIL / uint8 array / uint8 [3, H, W] tensor) or its `SAMImage`.
        coarse_logits: [n, h, w] coarse logits over the image region (any resolution).
        text_embeds: n tensors [k_i, E], phrase i's token embeddings (E = `embed_dim`).
        """
        image = self.prepare_image(image)
        n = coarse_logits.shape[0]
        if len(text_embeds) != n:
            raise ValueError(f"got {n} coarse masks but {len(text_embeds)} text-embedding sets")
        if n == 0:
            return coarse_logits.new_zeros((0, *image.original_size))
        image_embeddings = self.encode_image(image)
        pe = self.model.prompt_encoder.pe_layer
        if pe.positional_encoding_gaussian_matrix.dtype != torch.float32:
            # A bf16 cast of the whole model (DeepSpeed) reaches this buffer too, but
            # segment_anything multiplies float32 coordinates with it: keep it float32.
            pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        prompt_dtype = self.model.prompt_encoder.no_mask_embed.weight.dtype
        masks = self.mask_prompts(coarse_logits, image.input_size).to(prompt_dtype)
        boxes = self.box_prompts(coarse_logits, image.original_size)
        # Box and mask prompts are per-phrase independent, so they are encoded as one batch.
        sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes, masks=masks)
        sparse = sparse.to(dense.dtype)
        image_pe = self.model.prompt_encoder.get_dense_pe().to(dense.dtype)
        image_embeddings = image_embeddings.to(dense.dtype)
        refined = []
        # One decoder call per phrase: the phrases carry different numbers of text tokens.
        for i in range(n):
            tokens = torch.cat([sparse[i : i + 1], text_embeds[i][None].to(dense.dtype)], dim=1)
            low_res, _ = self.model.mask_decoder(
                image_embeddings=image_embeddings,
                image_pe=image_pe,
                sparse_prompt_embeddings=tokens,
                dense_prompt_embeddings=dense[i : i + 1],
                multimask_output=False,
            )
            refined.append(
                self.model.postprocess_masks(low_res, image.input_size, image.original_size)[0, 0]
            )
        return torch.stack(refined)
