"""`python -m bench [--quick | --full] [--only a,b]`: the benchmark suite (bench/run.py)."""

import sys

from .run import main

sys.exit(main())
