"""The CPU demo: orchestration helpers behind ``run_demo.sh``.

* :mod:`steca.demo.stage_markers` runs one pipeline stage as a subprocess and writes a completion marker
  (``<run>/.stages/<name>.json``) only after the stage succeeded, so a rerun skips finished stages.
* :mod:`steca.demo.prep` small data helpers (the task subset sampled for Monte Carlo, step counts).
* :mod:`steca.demo.results` the rows, columns and the loader of a run's evaluations (summaries, per-game files).
* :mod:`steca.demo.significance` the statistics as pure functions (Wilson, exact McNemar, bootstrap, sample sizes).
* :mod:`steca.demo.comparison` intervals, paired tests and per-type tables from one or several runs.
* :mod:`steca.demo.report` writes ``results.md``, the seeds report and the plots.

``python -m steca.demo --help`` lists the sub-commands.
"""
