"""Build D_c (calibrated trajectories) from step records: a thin entry point over :mod:`steca.collection.collect_cli`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.collection.collect_cli import main  # noqa: E402

if __name__ == "__main__":
    main("calibrated", "virtualhome")
