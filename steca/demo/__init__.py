"""The CPU demo: orchestration helpers behind ``run_demo.sh``.

* :mod:`steca.demo.stage_markers` runs one pipeline stage as a subprocess and writes a completion marker
  (``<run>/.stages/<name>.json``) only after the stage succeeded, so a rerun skips finished stages.
* :mod:`steca.demo.prep` small data helpers (the task subset sampled for Monte Carlo, step counts).
* :mod:`steca.demo.results` reads the evaluation summaries and writes the table, ``results.md`` and plots.

``python -m steca.demo --help`` lists the sub-commands.
"""
