# The HG head (docs/architecture.md); sizes come from the LMM's dims.
from hg_lmm.heads.hg import HGHead

head = dict(type=HGHead)
# mmdet sigmoid BCE + naive Dice (eps 1), weights as in the reference configs.
mask_loss = dict(loss_mask_weight=1.0, loss_dice_weight=1.0)
