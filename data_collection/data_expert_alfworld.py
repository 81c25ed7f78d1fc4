"""Build D_s (expert sub-trajectories) from step records: a thin entry point over :mod:`steca.method.collect`."""
from steca.method.collect import main

if __name__ == "__main__":
    main("expert", "alfworld")
