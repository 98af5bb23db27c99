"""HG-LMM: pixel-level grounding for frozen large multimodal models."""
