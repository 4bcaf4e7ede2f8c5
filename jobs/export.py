"""`ecomtl export` as a job script (`ray job submit --working-dir . -- python jobs/export.py ...`)."""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
