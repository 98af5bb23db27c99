"""Evaluation: metrics (`metrics`), noun phrases (`phrases`) and mask RLE I/O (`rle`).

Nothing is imported here so that `import hg_lmm.evaluation` stays cheap; import the submodules.
"""
