"""Trainable mask heads that read frozen-LMM features: `hg` (the HG head) and the F-LMM family."""
