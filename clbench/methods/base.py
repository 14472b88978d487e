"""The method interface: a method turns one training step into named loss terms.

The trainer owns everything else (forward passes go through ``step.forward``, masking through
``step.cross_entropy``, and zero_grad/backward/step happen once, in the trainer), so a method
file is only its update rule. What a method needs beyond loss terms comes through a few small,
optional hooks, each vectorised over the run axis R and each a pure function of what it is given
(state goes in, new state comes out; the trainer stores it and checkpoints it):

- ``init_state(ctx)`` / ``MethodOutput.state``: the method's own tensors (``ctx.state``,
  ``step.state``), e.g. X-DER's per-slot counters, iCaRL's frozen teacher and exemplar lists;
- ``train_draws(rng, ...)``: per-step random draws of one run, made ahead from that run's own
  generator (X-DER's coin flips), handed to each step as ``step.draws``;
- ``MethodOutput.reference`` + ``edit_gradients(step, grads, reference)``: a second set of terms the
  trainer differentiates separately, and an edit of the gradients before the SGD step (A-GEM);
- ``task_rows(ctx, rows)``: the training rows of a task, per run (iCaRL adds its exemplars);
- ``plan_insertions(...)``: which buffer slot each incoming sample goes to (reservoir by default;
  GDumb's class-balanced greedy sampler);
- ``end_task(ctx)``: end-of-task work, returning new state, buffer contents and parameters (X-DER's
  rebuild, iCaRL's herding and teacher, A-GEM's memory, WA's weight aligning, BiC's validation rows);
- ``end_passes``/``end_pass(ctx, i)``: passes of an end-of-task phase after ``end_task``, each a new
  state, checkpointed between passes (BiC's bias stage);
- ``classifier(ctx)``: a method-defined evaluation classifier (iCaRL's nearest mean of exemplars);
- ``refits`` with ``refit_epochs``/``refit_lr``/``refit_draws``/``refit_terms``: training from
  scratch on the memory, in a phase the trainer runs with its own step machinery (GDumb).

Randomness: hooks draw only from the per-run generators they are handed (``ctx.rngs``, ``rng``),
each derived from the run's seed alone, so a run's results never depend on its group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clbench.data.loading import ContinualData
from clbench.lockstep.backbones import BatchedBackbone, Params
from clbench.lockstep.buffer import Memory, reservoir_slots
from clbench.lockstep.step import Step

Options = Mapping[str, Any]


@dataclass(frozen=True)
class MethodOutput:
    # Each term is (R,), already weighted (e.g. alpha * mse): the loss is their sum.
    terms: dict[str, torch.Tensor]
    # Raw, unmasked logits of the stream batch, stored in the buffer with its samples (DER).
    stream_logits: torch.Tensor | None = field(default=None)
    # Terms (R,) that are not part of the loss: the trainer differentiates their sum separately and
    # hands both gradients to ``Method.edit_gradients`` (A-GEM's reference gradient).
    reference: dict[str, torch.Tensor] | None = field(default=None)
    # New values of method-state tensors, stored once the step's update is done (X-DER's counters).
    state: dict[str, torch.Tensor] | None = field(default=None)


@dataclass(frozen=True)
class MethodContext:
    """What the task-level hooks see of a lockstep group, every tensor with a leading run axis."""

    task: int  # the task just trained (end_task), or being trained
    data: ContinualData
    net: BatchedBackbone
    params: Params  # the current parameters (detached)
    bn: Params  # BatchNorm running statistics (empty for the MLP)
    state: Mapping[str, torch.Tensor]  # the method's state
    memory: Memory | None  # the replay buffer's contents (None: the method has no buffer)
    rngs: Sequence[np.random.Generator]  # each run's own "method" stream
    buffer_sizes: tuple[int, ...]
    batch_size: int
    options: Options

    @property
    def n_runs(self) -> int:
        return len(self.buffer_sizes)

    @property
    def classes_per_task(self) -> int:
        return self.data.spec.classes_per_task

    def forward(
        self, x: torch.Tensor, *, train: bool = False, features: bool = False, chunk: int = 512
    ) -> torch.Tensor:
        """Logits (or, with ``features``, the penultimate features) ``(R, N, .)`` of prepared inputs
        ``x`` ``(R, N, C, H, W)``, without gradient, in chunks of ``chunk`` rows: in evaluation mode,
        or with ``train`` in training mode (BatchNorm on each chunk's statistics, its running
        statistics untouched)."""
        fn = self.net.features if features else self.net.forward
        with torch.no_grad():
            return torch.cat(
                [fn(self.params, self.bn, x[:, i : i + chunk], train=train)[0] for i in range(0, x.shape[1], chunk)],
                dim=1,
            )


@dataclass(frozen=True)
class TaskEnd:
    """What ``end_task`` returns: the method's new state and, if it rewrote them, the buffer's contents
    and the network's parameters (WA's aligned head; the trainer trains on from them)."""

    state: dict[str, torch.Tensor]
    memory: Memory | None = None
    params: Params | None = None


class Method:
    name: str = ""
    replay_draws: int = 0  # independent buffer minibatches drawn per step
    replay_from_task: int = 0  # first task whose steps replay (the buffer must be non-empty too)
    stores_logits: bool = False  # the buffer keeps the logits of inserted samples
    uses_buffer: bool = False  # the trainer keeps a replay buffer of buffer_size samples per run
    # Incoming samples are written to the buffer during the steps (slots from ``plan_insertions``);
    # False: the method writes its buffer itself (``end_task``), which holds ``Memory.held`` rows.
    inserts_stream: bool = True
    # Keeps buffer_size exemplars of its own, outside the replay buffer (iCaRL): the buffer size matters.
    exemplar_memory: bool = False
    # Per-run shapes depend on the buffer size (class-balanced memories, training set + exemplars):
    # the planner puts only runs of one buffer size in a lockstep group.
    group_by_buffer_size: bool = False
    # Reads a task's training rows itself (``ctx.data.train_task_idx`` or ``task_rows``), as one (n,)
    # tensor: with a validation split, such runs share a lockstep group only with runs of their seed
    # (one split). Otherwise a group over seeds hands the method (R, n) rows, one split per run.
    reads_task_rows: bool = False
    tracks_seen_classes: bool = False  # the trainer passes step.seen_classes (ER-ACE)
    trains_on_seen_tasks: bool = False  # joint: task t trains, from the initial weights, on tasks 0..t
    loss_terms_names: tuple[str, ...] = ("ce",)
    # Where the general mask can act: the rows this method's softmax cross-entropy sees ("stream":
    # incoming samples, "buffer": replayed ones). A mask placed only where it cannot act would make
    # a run identical to its baseline: that is refused as bad input (``clbench.config.resolve``);
    # an empty tuple (no softmax cross-entropy at all) refuses every mask.
    mask_acts_on: tuple[str, ...] = ("stream", "buffer")
    # The keep-sets (``clbench.runs.mask.MASK_KEEP_CHOICES``) under which the mask acts in this method;
    # another is refused as bad input, like a placement where the mask cannot act.
    mask_keeps: tuple[str, ...] = ("task", "batch", "seen")
    weights: tuple[str, ...] = ()  # which of the config's alpha and beta the method reads
    options: Mapping[str, Any] = {}  # the method's own hyperparameters and their defaults
    # Each option's valid values, checked for every way a run is asked for (the CLI, experiment
    # files, Python): ">= LOW", "> LOW", "LOW..HIGH" (both ends included) or "LOW..<HIGH"; the type is the
    # default's (an int option takes whole numbers only). An option not listed takes any finite value.
    option_ranges: Mapping[str, str] = {}
    run_notes: tuple[str, ...] = ()  # recorded in every run's notes (what the method is, as run)
    refits: bool = False  # trains from scratch on its memory at every task end (see refit_*)

    def loss_terms(self, step: Step) -> MethodOutput:
        raise NotImplementedError

    # -- optional hooks (the defaults do nothing) ---------------------------------------------------

    def init_state(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        """The method's state tensors before the first task (checkpointed with the group)."""
        return {}

    def train_draws(
        self, rng: np.random.Generator, n_steps: int, replay_rows: int, options: Options
    ) -> dict[str, np.ndarray]:
        """One run's random draws for the next ``n_steps`` training steps (arrays with a leading
        ``n_steps`` axis), from that run's own generator; each step gets its slice in ``step.draws``."""
        return {}

    def edit_gradients(
        self, step: Step, grads: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """The gradients the SGD step applies, from the loss's (``grads``) and the reference terms'
        (``reference``), per parameter with a leading run axis. Called only when the method
        returned ``MethodOutput.reference``."""
        return tuple(grads)

    def task_rows(self, ctx: MethodContext, rows: torch.Tensor) -> torch.Tensor | None:
        """The training rows (indices into ``ctx.data.train_x``) of task ``ctx.task``, ``(R, n)`` when
        they differ per run; ``None`` keeps the task's rows ``rows`` for every run."""
        return None

    def plan_insertions(
        self,
        rng: np.random.Generator,
        labels: np.ndarray,
        memory_labels: np.ndarray,
        n_seen: int,
        size: int,
        batch_size: int,
    ) -> np.ndarray:
        """The buffer slot (-1: not stored) of each of one run's incoming samples this epoch, in its
        order (``labels``: their classes; ``memory_labels``: the classes in the buffer's slots now)."""
        return reservoir_slots(rng, n_seen, len(labels), size, batch_size)

    def end_task(self, ctx: MethodContext) -> TaskEnd | None:
        """Work at the end of task ``ctx.task``, before its evaluation: new state and buffer contents."""
        return None

    def end_passes(self, options: Options) -> int:
        """How many ``end_pass`` calls follow ``end_task`` at every task end (0: none)."""
        return 0

    def end_pass(self, ctx: MethodContext, i: int) -> dict[str, torch.Tensor]:
        """Pass ``i`` of the end-of-task phase (BiC's bias stage: one pass over its validation rows):
        the method's new state from ``ctx.state`` (the previous pass's). The trainer may checkpoint
        between two passes: a pass draws only from ``ctx.rngs`` and reads only ``ctx.state``."""
        return dict(ctx.state)

    def classifier(self, ctx: MethodContext) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """An evaluation classifier: prepared inputs ``(R, N, C, H, W)`` -> class scores ``(R, N, K)``
        (argmax = prediction, softmax = confidence). ``None``: the network's logits."""
        return None

    def refit_epochs(self, options: Options) -> int:
        return 0

    def refit_lr(self, epoch: int, lr: torch.Tensor, options: Options) -> torch.Tensor:
        """The learning rate (R,) of refit epoch ``epoch``; ``lr`` is each run's configured one."""
        return lr

    def refit_draws(
        self, rng: np.random.Generator, rows_per_step: Sequence[int], input_shape: tuple[int, ...], options: Options
    ) -> dict[str, np.ndarray]:
        """One run's random draws for the steps of a refit epoch (``rows_per_step[s]`` rows at step s;
        arrays with a leading step axis, like ``train_draws``)."""
        return {}

    def refit_terms(self, step: Step) -> MethodOutput:
        """Loss terms of one refit step on a batch of buffer rows (``step.stream``, from_buffer)."""
        raise NotImplementedError
