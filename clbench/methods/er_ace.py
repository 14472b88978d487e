"""ER-ACE (Caccia et al. 2022), as in Mammoth's er_ace.

From the second task on, the incoming batch's cross-entropy excludes (-inf, no gradient) the
classes seen so far that are absent from the batch; classes from the largest seen one upward
stay active. The replayed batch uses plain cross-entropy; the two are summed. The general
masked softmax, when switched on, is applied by the loss layer on top of this rule.
"""

import torch
import torch.nn.functional as F

from clbench.lockstep.step import Step
from clbench.methods.base import Method, MethodOutput


class ERACE(Method):
    name = "er_ace"
    replay_draws = 1
    replay_from_task = 1
    uses_buffer = True
    tracks_seen_classes = True
    loss_terms_names = ("ce", "replay_ce")

    def loss_terms(self, step: Step) -> MethodOutput:
        logits = step.forward(step.stream)
        if step.task == 0:
            ce = step.cross_entropy(logits, step.stream)
            return MethodOutput({"ce": ce, "replay_ce": torch.zeros_like(ce)})
        n_classes = logits.shape[-1]
        present = F.one_hot(step.stream.y, n_classes).amax(dim=1).bool()  # (R, K)
        classes = torch.arange(n_classes, device=logits.device)
        max_seen = torch.where(step.seen_classes, classes, -1).amax(dim=1, keepdim=True)  # (R, 1)
        future = (classes >= max_seen) & (max_seen < n_classes - 1)
        inactive = ~(present | future)
        ce = step.cross_entropy(logits, step.stream, inactive=inactive.unsqueeze(1))
        buf = step.replay[0]
        return MethodOutput({"ce": ce, "replay_ce": step.cross_entropy(step.forward(buf), buf)})
