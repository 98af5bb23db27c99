# The U-Net+SAM head: F-LMM's U-Net mask head + SAM ViT-L refiner (docs/architecture.md).
# SAM's frozen image encoder (and its initial prompt encoder / mask decoder) come from the official
# weights; download them to `sam_checkpoint` (checkpoints/README.md).
from hg_lmm.heads.unet_sam import SAMRefiner, UNetMaskHead, UNetSAMHead, build_sam

sam_checkpoint = "checkpoints/sam_vit_l_0b3195.pth"
head = dict(
    type=UNetSAMHead,
    mask_head=dict(type=UNetMaskHead),  # in_channels = L*H, filled in from the LMM's dims
    sam=dict(
        type=SAMRefiner,
        model=dict(type=build_sam, variant="vit_l", checkpoint=sam_checkpoint),
    ),
)
# Applied to both the coarse U-Net masks and SAM's refined masks.
mask_loss = dict(loss_mask_weight=1.0, loss_dice_weight=1.0)
