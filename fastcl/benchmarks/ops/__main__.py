"""``python -m fastcl.benchmarks.ops``."""

import sys

from . import main

sys.exit(main())
