"""Joint training (the upper bound): after task t, a model trained from its initial weights on
the shuffled union of tasks 0..t, so every row of its accuracy matrix is the joint bound for the
tasks seen so far. The loss is plain fine-tuning's; the trainer builds the union."""

from clbench.methods.sgd import SGD


class Joint(SGD):
    name = "joint"
    trains_on_seen_tasks = True
