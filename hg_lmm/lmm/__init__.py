"""Frozen LMMs: the dims/features records, the adapters, our DeepSeek-VL and the processors.

Kept import-light on purpose: import the submodule you need (`hg_lmm.lmm.base`,
`hg_lmm.lmm.deepseek_vl`, `hg_lmm.lmm.processors`, ...). Nothing here pulls in transformers, timm
or segment_anything.
"""
