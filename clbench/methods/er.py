"""Experience Replay (Mammoth's ER): one cross-entropy over the stream batch concatenated with a
buffer minibatch. With masking on the stream, only the stream rows are masked (loss layer)."""

from clbench.lockstep.step import Step, concat
from clbench.methods.base import Method, MethodOutput


class ER(Method):
    name = "er"
    replay_draws = 1
    uses_buffer = True

    def loss_terms(self, step: Step) -> MethodOutput:
        batch = concat(step.stream, step.replay[0]) if step.replay else step.stream
        return MethodOutput({"ce": step.cross_entropy(step.forward(batch), batch)})
