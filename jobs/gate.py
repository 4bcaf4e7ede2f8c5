"""`ecomtl gate` as a job script; exits 1 when the candidate is refused:

    ray job submit --working-dir . -- python jobs/gate.py CANDIDATE --against REFERENCE [--tolerance 0.01]
"""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["gate", *sys.argv[1:]]))
