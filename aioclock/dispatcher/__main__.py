"""`python -m aioclock.dispatcher`: the dispatcher process (started by the supervisor only)."""

import pickle
import sys

from aioclock.dispatcher.process import run_from_payload

if __name__ == "__main__":
    run_from_payload(pickle.loads(sys.stdin.buffer.read()))
