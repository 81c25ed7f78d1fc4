"""Stage 3 on files: the command line behind ``data_collection/*.py`` (:mod:`~steca.collection.collect_cli`).

It reads step records and expert trajectories, calls the pure builders of :mod:`steca.method`
and writes D_s / D_c / D_e, the merged training file, summaries and histograms.
"""
