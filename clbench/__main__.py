"""``python -m clbench``: the same as the ``clbench`` console script."""

import sys

from clbench.cli import main

sys.exit(main())
