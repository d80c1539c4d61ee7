"""`python -m lowrank_ops.compare`: the project's main job (see cli.py)."""

import sys

from .cli import compare_main

sys.exit(compare_main())
