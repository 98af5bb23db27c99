"""Evaluation: metrics (`metrics`), noun phrases (`phrases`), the benchmarks' datasets and
per-sample scoring (`benchmarks`), answer grounding (`grounding`), GCG prediction files (`gcg`)
and the shared CLI runner (`runner`). Mask RLE lives in `hg_lmm.utils.rle`.

Nothing is imported here so that `import hg_lmm.evaluation` stays cheap; import the submodules.
"""
