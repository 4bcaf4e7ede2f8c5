"""`ecomtl evaluate` as a job script (`ray job submit --working-dir . -- python jobs/evaluate.py ...`)."""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
