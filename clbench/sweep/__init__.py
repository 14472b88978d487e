"""Sweeps: planning runs against the registry (``plan``, with the cost model in ``cost`` and the
memory a group needs in ``ram``), and the driver that executes a plan (``driver``) on an executor
(``executors``: this process, a Ray cluster)."""
