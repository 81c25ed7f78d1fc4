"""eval_agent: everything that acts — environments, policies (model backends), prompts, the rollout
engine and the evaluation CLI. It knows nothing about STeCa's method (see the ``steca`` package)."""
