"""Entry point of the "SFT + DPO" comparison (trl DPOTrainer). All options: ``python Reinfoced_train/dpo_train.py --help``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.training.dpo import main  # noqa: E402

if __name__ == "__main__":
    main()
