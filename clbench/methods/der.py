"""Dark Experience Replay (Buzzega et al. 2020): CE(stream) + alpha * MSE(net(buffer x), stored
logits). The stored targets are the raw logits of the stream forward pass, never masked."""

import torch

from clbench.lockstep.step import Step
from clbench.methods.base import Method, MethodOutput


class DER(Method):
    name = "der"
    replay_draws = 1
    uses_buffer = True
    mask_acts_on = ("stream",)  # DER has no cross-entropy on replayed rows (only the logit MSE, never masked)
    stores_logits = True
    weights = ("alpha",)
    loss_terms_names = ("ce", "logit_mse")

    def loss_terms(self, step: Step) -> MethodOutput:
        logits = step.forward(step.stream)
        terms = {"ce": step.cross_entropy(logits, step.stream)}
        if step.replay:
            buf = step.replay[0]
            terms["logit_mse"] = step.alpha * step.logit_mse(step.forward(buf), buf)
        else:
            terms["logit_mse"] = torch.zeros_like(terms["ce"])
        return MethodOutput(terms, stream_logits=logits)
