"""`python -m cli ...`: the `forecast` command (what tests and benchmarks start)."""

import sys

from cli.main import main

sys.exit(main())
