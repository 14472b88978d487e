"""What identifies this clbench: the package version, and the version of what its engine computes."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

__version__ = "0.1.0"

# The version of what the engine computes. Bump it with every change that alters any number a run
# produces, even at rounding level: a run's identity includes it, so runs computed before the change
# are never served from the cache again (the store shows them as ``stale``).
#   1: clbench 0.1.0.
#   2: the replay plan from step 256 of an epoch on no longer counts the samples seen twice (a buffer
#      that was not yet full was sampled in slots never written: blank inputs with label 0).
RESULTS_VERSION = 2


def source_digest(package: Path) -> str:
    """SHA-256 over the Python sources under ``package`` (their paths relative to it and their bytes,
    in path order): it changes with any change to the code, where ``__version__`` does not."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix()):
        name = path.relative_to(package).as_posix()
        if "__pycache__" in name:
            continue
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


@cache  # the installed sources do not change under a running process (a read-only fact, not state)
def code_identity() -> str:
    """What a cluster's nodes must share with the driver: this clbench's version, the results version
    and the digest of its sources, as ``VERSION+rRESULTS.DIGEST12``. Two installs that could compute
    different numbers never agree (the same ``__version__`` with other code does not pass)."""
    return f"{__version__}+r{RESULTS_VERSION}.{source_digest(Path(__file__).parent)[:12]}"
