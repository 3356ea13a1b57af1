"""Constants shared across the package, each defined once.

>>> IGNORE_INDEX, SIZE_DIVISOR
(255, 32)
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "SIZE_DIVISOR"]

IGNORE_INDEX = 255
"""Label of void pixels in semantic targets (ignored by the losses and the semantic metrics)."""

SIZE_DIVISOR = 32
"""Input sides are padded to a multiple of this, the FPN's largest backbone stride (C5), for exact level sizes."""
