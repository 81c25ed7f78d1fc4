"""STeCa's method as pure functions and dataset builders.

* :mod:`~steca.method.rewards`: Monte Carlo step reward (mean rollout outcome) and sample weights.
* :mod:`~steca.method.deviation`: the deviation rule ``r_explore(t) - r_expert(t-1) <= delta`` and the
  released code's filters, each an option.
* :mod:`~steca.method.encoders` / :mod:`~steca.method.dtw`: action embeddings and the DTW deviation distance.
* :mod:`~steca.method.reflection`: the reflection prompt, LLM reflectors with a disk cache, the offline stand-in.
* :mod:`~steca.method.trajectories`: cutting conversations into prompt, steps and continuations.
* :mod:`~steca.method.datasets`: builders of D_c, D_e and D_s; :mod:`~steca.method.collect`: the
  file-level stage (``data_collection/*.py``) with summaries and histograms.
"""
