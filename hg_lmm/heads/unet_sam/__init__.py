"""The U-Net+SAM head: F-LMM's U-Net mask head with a SAM refiner (docs/architecture.md)."""

from hg_lmm.heads.unet_sam.head import UNetSAMHead
from hg_lmm.heads.unet_sam.sam_refiner import (
    SAMImage,
    SAMRefiner,
    build_sam,
    mask_boxes,
    prepare_sam_image,
)
from hg_lmm.heads.unet_sam.unet import UNetMaskHead

__all__ = [
    "SAMImage",
    "SAMRefiner",
    "UNetMaskHead",
    "UNetSAMHead",
    "build_sam",
    "mask_boxes",
    "prepare_sam_image",
]
