"""`python -m lowrank_ops.compare`: the project's main job (see cli.py)."""

import sys

from .cli import compare_main, ignore_sigint_outside_the_run

ignore_sigint_outside_the_run()
sys.exit(compare_main())
