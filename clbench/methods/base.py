"""The method interface: a method turns one training step into named loss terms.

The trainer owns everything else (forward passes go through ``step.forward``, masking through
``step.cross_entropy``, and zero_grad/backward/step happen once, in the trainer), so a method
file is only its update rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..step import Step


@dataclass(frozen=True)
class MethodOutput:
    # Each term is (R,), already weighted (e.g. alpha * mse): the loss is their sum.
    terms: dict[str, torch.Tensor]
    # Raw, unmasked logits of the stream batch, stored in the buffer with its samples (DER).
    stream_logits: torch.Tensor | None = field(default=None)


class Method:
    name: str = ""
    replay_draws: int = 0  # independent buffer minibatches drawn per step
    replay_from_task: int = 0  # first task whose steps replay (the buffer must be non-empty too)
    stores_logits: bool = False  # the buffer keeps the logits of inserted samples
    uses_buffer: bool = False  # incoming samples go to a reservoir buffer
    tracks_seen_classes: bool = False  # the trainer passes step.seen_classes (ER-ACE)
    trains_on_seen_tasks: bool = False  # joint: task t trains, from the initial weights, on tasks 0..t
    loss_terms_names: tuple[str, ...] = ("ce",)
    # Where the general mask can act: the rows this method's softmax cross-entropy sees ("stream":
    # incoming samples, "buffer": replayed ones). A mask placed only where it cannot act would make
    # a run identical to its baseline: that is refused as bad input (``clbench.config.resolve``).
    mask_acts_on: tuple[str, ...] = ("stream", "buffer")

    def loss_terms(self, step: Step) -> MethodOutput:
        raise NotImplementedError
