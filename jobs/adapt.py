"""`ecomtl adapt` as a job script (one Ray Train worker fits the new head):

    ray job submit --working-dir . -- python jobs/adapt.py BUNDLE jobs/adapt_configs/class_name.yaml --shots 32 --out DIR
"""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["adapt", *sys.argv[1:]]))
