"""The lockstep engine: trains a group of runs as one computation and evaluates it (``trainer``,
``evaluation``), checkpoints it (``checkpoint``) and records the numeric environment its numbers
depend on (``environment``)."""
