"""``python -m benchmarks.compare``: see :mod:`benchmarks.compare.cli`."""

import sys

from benchmarks.compare.cli import main

sys.exit(main())
