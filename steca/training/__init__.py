"""Training: tiny-model bootstrap (``bootstrap``), assistant-only tokenisation (``chat``), SFT with trl
(``sft``), STeCa's reinforced objective (``losses``, ``reinforced``) and the DPO comparison (``dpo``).

Modules import torch/transformers/trl lazily where they can, so importing the package is cheap.
"""
