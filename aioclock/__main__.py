"""`python -m aioclock`: the command line (see `aioclock.cli`)."""

import sys

from aioclock.cli import main

if __name__ == "__main__":  # spawned worker processes import this module again: do nothing
    sys.exit(main(prog="python -m aioclock"))
