"""Build a part from a ready object or an xtuner-style config dict (`type=` the real callable)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def build(part: Any, **defaults: Any) -> Any:
    """Return `part` itself unless it is a config mapping with a `type`; then build it with
    xtuner's BUILDER, filling in `defaults` for keys the mapping does not set.

    This is what lets every component take either a built object (handy in tests) or a config
    dict (what configs hold), SAM-style.
    """
    if isinstance(part, Mapping) and "type" in part:
        from xtuner.registry import BUILDER

        return BUILDER.build({**defaults, **dict(part)})
    return part
