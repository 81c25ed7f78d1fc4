"""STeCa's sampling stage: expert steps, explored steps and Monte Carlo step rewards through the rollout engine.

* :mod:`~steca.sampling.stages`: the three stages (resumable JSONL, sharding).
* :mod:`~steca.sampling.sampling_cli`: their command line (``sampling/run_sampling.py``, ``sampling/*/*.sh``).
* :mod:`~steca.sampling.replay`: replaying calibrated trajectories in the environment.
* :mod:`~steca.sampling.policies`: several OpenAI-compatible servers behind one policy.
"""
