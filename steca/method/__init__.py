"""STeCa's method as pure functions and dataset builders.

* :mod:`~steca.method.rewards`: Monte Carlo step reward (mean rollout outcome) and sample weights.
* :mod:`~steca.method.deviation`: the deviation rule ``r_explore(t) - r_expert(t-1) <= delta`` and the
  released code's filters, each an option.
* :mod:`~steca.method.encoders` / :mod:`~steca.method.dtw`: action embeddings and the DTW deviation distance.
* :mod:`~steca.method.reflection`: the reflection prompt, LLM reflectors with a disk cache, the offline stand-in.
* :mod:`~steca.method.trajectories`: cutting conversations into prompt, steps and continuations.
* :mod:`~steca.method.datasets`: builders of D_c, D_e and D_s (the file-level stage that calls
  them, ``data_collection/*.py``, is :mod:`steca.collection.collect_cli`).
"""
