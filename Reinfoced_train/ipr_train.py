"""Entry point of IPR's training (outcome DPO + step DPO + SFT). All options: ``python Reinfoced_train/ipr_train.py --help``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.training.ipr import main  # noqa: E402

if __name__ == "__main__":
    main()
