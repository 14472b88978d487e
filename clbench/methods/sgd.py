"""Fine-tuning: cross-entropy on the incoming batch only (the lower bound)."""

from clbench.lockstep.step import Step
from clbench.methods.base import Method, MethodOutput


class SGD(Method):
    name = "sgd"
    mask_acts_on = ("stream",)  # no buffer: only incoming rows

    def loss_terms(self, step: Step) -> MethodOutput:
        return MethodOutput({"ce": step.cross_entropy(step.forward(step.stream), step.stream)})
