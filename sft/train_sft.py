"""Entry point of stage 1 (SFT). All options: ``python sft/train_sft.py --help``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.training.sft import main  # noqa: E402

if __name__ == "__main__":
    main()
