"""Distillation job (`ecomtl distill` as a script); locally or on a cluster, unchanged:

    python jobs/distill.py TEACHER_BUNDLE jobs/configs/distill_demo.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/distill.py TEACHER_BUNDLE jobs/configs/distill_demo.yaml

The teacher bundle must be readable by the driver (a path on the head node or a shared
filesystem): it runs there once; the workers receive its outputs with the train rows.
"""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
