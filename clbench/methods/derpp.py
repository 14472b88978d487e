"""DER++: DER plus beta * CE(net(buffer x'), y') on a second, independent buffer draw."""

import torch

from clbench.lockstep.step import Step
from clbench.methods.base import MethodOutput
from clbench.methods.der import DER


class DERpp(DER):
    name = "derpp"
    replay_draws = 2
    weights = ("alpha", "beta")
    mask_acts_on = ("stream", "buffer")  # its second draw's cross-entropy sees replayed rows
    loss_terms_names = ("ce", "logit_mse", "replay_ce")

    def loss_terms(self, step: Step) -> MethodOutput:
        out = super().loss_terms(step)
        if step.replay:
            buf = step.replay[1]
            replay_ce = step.beta * step.cross_entropy(step.forward(buf), buf)
        else:
            replay_ce = torch.zeros_like(out.terms["ce"])
        return MethodOutput({**out.terms, "replay_ce": replay_ce}, out.stream_logits)
