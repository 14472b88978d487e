"""Continual benchmarks: their specs (``specs``), where each dataset's files come from (``sources``),
readers of the real on-disk formats (``readers``), loading into memory split by task (``loading``)
and augmentation (``augment``)."""
