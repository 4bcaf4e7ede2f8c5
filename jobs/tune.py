"""Ray Tune + Optuna sweep job; locally or on a cluster, unchanged:

    python jobs/tune.py jobs/configs/demo_sweep.yaml [key=value ...] [--name NAME]
    ray job submit --working-dir . -- python jobs/tune.py jobs/configs/demo_sweep.yaml
"""

import sys

import _path  # noqa: F401

from ecomtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
