"""``python -m clbench``: the same as the ``clbench`` console script."""

import sys

from .cli import main

sys.exit(main())
