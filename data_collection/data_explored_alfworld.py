"""Build D_e (explored successes) from step records: a thin entry point over :mod:`steca.method.collect`."""
from steca.method.collect import main

if __name__ == "__main__":
    main("explored", "alfworld")
