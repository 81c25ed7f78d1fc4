"""Entry point behind ``sampling/*/*.sh``: a thin wrapper over :mod:`steca.sampling.cli`."""
from steca.sampling.cli import main

if __name__ == "__main__":
    main()
