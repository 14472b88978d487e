"""The lockstep engine: trains a group of runs as one computation and evaluates it.

``loop`` (``train_group``: the training loop, phase by phase) stands on ``group`` (the group's fixed
setup), ``group_state`` (what it has done so far, and its checkpoints' contents), ``plans`` (each
run's random draws), ``update`` (one training step), ``divergence`` (the watch for non-finite runs)
and ``refit`` (GDumb's); ``evaluation`` fills the accuracy matrices; ``checkpoint`` handles the
checkpoint files (torch-free); ``progress`` is what a group reports (torch-free); ``environment``
records the numeric environment its numbers depend on."""
