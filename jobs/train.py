"""Multi-task training job; locally or on a cluster, unchanged:

    python jobs/train.py jobs/configs/demo.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/train.py jobs/configs/demo.yaml
"""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
