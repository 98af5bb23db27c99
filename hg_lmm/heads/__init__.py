"""Trainable mask heads that read frozen-LMM features: `hg` (the HG head) and `unet_sam` (F-LMM's
U-Net+SAM head); `pooling` and `losses` serve both."""
