"""Every use of trl's internals, in one place: the DPO trainer of :mod:`steca.training.dpo`.

trl's ``DPOTrainer`` tokenises conversational pairs itself, scores every completion token and
computes the reference log-probabilities itself. Ours come tokenised, with assistant-only masks,
and with reference log-probabilities computed once beforehand (:mod:`steca.training.reference_logps`).
Three private hooks of ``DPOTrainer`` make it take them as they are (the fast path):

- ``_prepare_dataset``: a pre-tokenised dataset (``prompt_ids``...) is returned unchanged;
- ``_set_signature_columns_if_needed``: the mask columns are kept;
- ``_precompute_ref_logps``: the stored ``ref_chosen_logps``/``ref_rejected_logps`` columns are used.

They exist, with these meanings, in the trl releases of :data:`TESTED_TRL`. With another trl, or
when a hook is missing, :func:`trl_fast_path` logs one warning and :mod:`steca.training.dpo` runs the
same objective on transformers' public ``Trainer`` API instead (tests compare the two).
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

logger = logging.getLogger(__name__)

TESTED_TRL = ">=1.16.0,<1.17"
HOOKS = ("_prepare_dataset", "_set_signature_columns_if_needed", "_precompute_ref_logps")
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@functools.lru_cache(maxsize=None)
def trl_fast_path() -> bool:
    """Whether the installed trl is in :data:`TESTED_TRL` and has every hook (else one warning, False)."""
    from packaging.specifiers import SpecifierSet

    try:
        import trl
        from trl import DPOTrainer
    except ImportError as e:
        logger.warning("trl is not importable (%s): DPO runs on transformers' Trainer", e)
        return False
    if trl.__version__ not in SpecifierSet(TESTED_TRL):
        logger.warning("trl %s is outside the tested range %s: DPO runs on transformers' Trainer (same loss)",
                       trl.__version__, TESTED_TRL)
        return False
    missing = [h for h in HOOKS if not callable(getattr(DPOTrainer, h, None))]
    if missing:
        logger.warning("trl's DPOTrainer lacks %s: DPO runs on transformers' Trainer (same loss)", ", ".join(missing))
        return False
    return True


def pretokenised_dpo_trainer_class(extra_columns: Sequence[str]) -> type:
    """trl's ``DPOTrainer`` taking pre-tokenised pairs, keeping ``extra_columns`` and stored reference values."""
    from trl import DPOTrainer

    keep = list(extra_columns)

    class PretokenisedDPOTrainer(DPOTrainer):
        """``DPOTrainer`` on our tokenised pairs (see the module docstring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in next(iter(dataset)):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + keep + list(REF_COLUMNS)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            if all(c in dataset.column_names for c in REF_COLUMNS):
                return dataset
            return super()._precompute_ref_logps(dataset, name, batch_size)

    return PretokenisedDPOTrainer
