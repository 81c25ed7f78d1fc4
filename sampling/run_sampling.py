"""Entry point behind ``sampling/*/*.sh``: a thin wrapper over :mod:`steca.sampling.sampling_cli`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.sampling.sampling_cli import main  # noqa: E402

if __name__ == "__main__":
    main()
