"""Checks that a written PNG holds a drawing, not just a valid header."""
from __future__ import annotations

from pathlib import Path


def colored_fraction(path: Path) -> float:
    """Fraction of the image's pixels in colour (bars, boxes, lines): neither white, grey nor black.

    Raises when the file is not a PNG that matplotlib can decode."""
    import matplotlib.image

    rgb = matplotlib.image.imread(path)[..., :3]
    return float(((rgb.max(-1) - rgb.min(-1)) > 0.1).mean())


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels."""
    import matplotlib.image

    return tuple(matplotlib.image.imread(path).shape[:2])
