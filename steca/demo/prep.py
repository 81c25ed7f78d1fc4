"""Small data helpers of the demo: the task subset that Monte Carlo scores, and training step counts."""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

from steca.records import load_pairs, load_sft, write_records


def take_subset(sft_path: str | os.PathLike, n: int, seed: int, output: str | os.PathLike) -> int:
    """Write ``n`` expert trajectories of ``sft_path`` drawn with ``random.Random(seed)`` (file order kept).

    ``n <= 0`` or ``n >=`` the number of records keeps them all. Returns the number written.
    Raises ``ValueError`` naming the file when it holds no valid record.
    """
    loaded = load_sft(sft_path)
    recs = loaded.records
    if not recs:
        raise ValueError(f"{sft_path}: no valid SFT record ({len(loaded.errors)} invalid)")
    if 0 < n < len(recs):
        keep = sorted(random.Random(seed).sample(range(len(recs)), n))
        recs = [recs[i] for i in keep]
    write_records(Path(output), recs)
    return len(recs)


def training_steps(pairs_path: str | os.PathLike, batch_size: int, epochs: int = 1) -> int:
    """Optimizer steps of ``epochs`` passes over a pair file: ``ceil(n_pairs / batch_size) * epochs``.

    The fair baseline is trained for exactly this many steps on expert data. Raises ``ValueError``
    when the file holds no valid pair (there is nothing to train on).
    """
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}")
    n = len(load_pairs(pairs_path).records)
    if n == 0:
        raise ValueError(f"{pairs_path}: no valid training pair; the sampling stages found no usable step")
    return math.ceil(n / batch_size) * epochs
