"""Merge training files into one (any environment): a thin entry point over :mod:`steca.method.collect`."""
from steca.method.collect import main

if __name__ == "__main__":
    main("merge", "alfworld")
