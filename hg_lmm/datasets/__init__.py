"""Datasets in the official formats (PNG, RefCOCO/+/g, GranD-f GCG, ReasonSeg), where their files
sit below a data root (`layout`), their tokenizing transform and collation. The synthetic toy set
that mirrors them is test tooling: `hg_lmm.testing.toy`.

Importing this package loads no data and imports neither mmdet nor pycocotools.
"""

from hg_lmm.datasets.collate import concat_datasets, list_collate
from hg_lmm.datasets.errors import (
    AnnotationError,
    CorruptImageError,
    DanglingAnnotationError,
    DatasetError,
    EmptyPieceError,
    MissingFileError,
)
from hg_lmm.datasets.grandf import GCGGroundTruth, GranDfGCGDataset
from hg_lmm.datasets.png import PNGDataset
from hg_lmm.datasets.reasonseg import ReasonSegDataset, ReasonSegSample
from hg_lmm.datasets.refcoco import RefCocoDataset
from hg_lmm.datasets.sample import GroundingSample, Piece
from hg_lmm.datasets.skip import SkipBadSamples
from hg_lmm.datasets.transforms import TokenizePieces, encode_pieces

__all__ = [
    "AnnotationError",
    "CorruptImageError",
    "DanglingAnnotationError",
    "DatasetError",
    "EmptyPieceError",
    "GCGGroundTruth",
    "GranDfGCGDataset",
    "GroundingSample",
    "MissingFileError",
    "PNGDataset",
    "Piece",
    "ReasonSegDataset",
    "ReasonSegSample",
    "RefCocoDataset",
    "SkipBadSamples",
    "TokenizePieces",
    "concat_datasets",
    "encode_pieces",
    "list_collate",
]
