"""LODE on DER++ (Liang & Li, NeurIPS 2023), as in its authors' code (code/models/lode_derpp.py,
rivals.md section 2): DER++ with its stream cross-entropy decoupled as in ``lode``.

Step, task t >= 1: loss = ``ce`` (intra: CE with the past classes excluded) + ``inter``
(rho / t x the old-vs-new term) + ``logit_mse`` (alpha x MSE to the stored logits on a first
replay draw) + ``replay_ce`` (beta x CE over all K classes on a second, independent draw), not
halved (unlike LODE-ER). Task 0 is DER++ exactly. The buffer stores the stream forward's raw
logits (all K columns), as DER++. Option ``rho`` (0.05: the authors' best_args for seq-cifar10
with buffer 500, as for ``lode``; alpha and beta are the config's, as for DER++).

Where the general mask acts: ``ce`` (stream rows) and ``replay_ce`` (buffer rows), as for DER++;
never on ``inter`` or the stored logits. The authors' copy at the repository root weighs the
intra term by a further C (1.0 in its best_args); the code/ copy followed here has none. The
first draw feeds the MSE and the second the CE, as clbench's DER++ (the authors' file names them
the other way round: two independent uniform draws either way).
"""

from __future__ import annotations

import torch

from clbench.lockstep.step import Step
from clbench.methods.base import MethodOutput
from clbench.methods.derpp import DERpp
from clbench.methods.lode import lode_stream_terms


class LODEDERpp(DERpp):
    name = "lode_derpp"
    options = {"rho": 0.05}
    loss_terms_names = ("ce", "inter", "logit_mse", "replay_ce")

    def loss_terms(self, step: Step) -> MethodOutput:
        z = step.forward(step.stream)
        ce, inter = lode_stream_terms(step, z, float(step.options["rho"]))
        zero = torch.zeros_like(ce)
        terms = {"ce": ce, "inter": inter, "logit_mse": zero, "replay_ce": zero}
        if step.replay:
            b1, b2 = step.replay
            terms["logit_mse"] = step.alpha * step.logit_mse(step.forward(b1), b1)
            terms["replay_ce"] = step.beta * step.cross_entropy(step.forward(b2), b2)
        return MethodOutput(terms, stream_logits=z)
