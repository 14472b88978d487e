"""What identifies this clbench: the package version, and the version of what its engine computes."""

from __future__ import annotations

__version__ = "0.1.0"

# The version of what the engine computes. Bump it with every change that alters any number a run
# produces, even at rounding level: a run's identity includes it, so runs computed before the change
# are never served from the cache again (the store shows them as ``stale``).
#   1: clbench 0.1.0.
#   2: the replay plan from step 256 of an epoch on no longer counts the samples seen twice (a buffer
#      that was not yet full was sampled in slots never written: blank inputs with label 0).
RESULTS_VERSION = 2
