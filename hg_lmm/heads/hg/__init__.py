"""The HG head (docs/architecture.md, "HG head")."""

from hg_lmm.heads.hg.head import HGHead
from hg_lmm.heads.hg.sizes import HGGeometry, hg_geometry

__all__ = ["HGGeometry", "HGHead", "hg_geometry"]
