"""Tests of hg_lmm.lmm."""
