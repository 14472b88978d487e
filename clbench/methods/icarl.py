"""iCaRL (Rebuffi et al. 2017, arXiv 1611.07725), as in current Mammoth's icarl.

Training set of task t: the task's samples plus every exemplar kept so far (ordinary rows, in one
shuffled order, augmented like the rest). Loss ``bce``: binary cross-entropy with logits, mean over
the rows and all K columns, against the one-hot label whose past classes' columns [0, P) are
replaced by sigmoid(outputs of the frozen network of the previous task end, evaluation mode);
``l2``: wd x the sum of squares of all parameters (Mammoth's opt_wd; 0 in the seq-mnist presets).

End of task t: the frozen teacher becomes a copy of the network; m = floor(M / (classes seen))
exemplars per class: old classes keep their first m (herding order), each new class takes m of
its training images by herding on L2-normalised features (evaluation mode, no augmentation):
greedily the image that brings the mean of the chosen ones closest to the class's mean.
Evaluation: the nearest mean of exemplars (NME): class mean = mean of the normalised features of
its exemplars, averaged with the mean over horizontally flipped copies (as Mammoth does on every
dataset), re-normalised; score of class c = -||f(x)/|f(x)| - mean_c||^2 (classes not seen yet:
-inf), so class-IL and task-IL predictions are the nearest means and the stored confidences are
the softmax of those scores.

Where the general mask acts: nowhere. iCaRL has no softmax cross-entropy (sigmoid BCE with
distillation): it is an unmasked reference baseline, and a mask given to it is refused.

Exemplars are kept as indices into the training set (``state["exemplars"]`` (R, K, cap), -1 =
none), capped at the smallest class's number of training samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.data.loading import prepare_inputs
from clbench.lockstep.step import Step, per_run_mean
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd

TEACHER, TEACHER_BN = "teacher.", "teacher_bn."


def normalize(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f, dim=-1)


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding, per run: ``features`` (R, n, D) -> (R, m) indices, in the order chosen; at
    step k the row minimising ||mean - (sum of the chosen + row) / k|| (first on ties)."""
    r, n, _ = features.shape
    mean = features.mean(1, keepdim=True)
    running = torch.zeros_like(mean)
    taken = torch.zeros((r, n), dtype=torch.bool, device=features.device)
    chosen = []
    for k in range(1, m + 1):
        cost = (mean - (features + running) / k).norm(dim=-1).masked_fill(taken, float("inf"))
        i = cost.argmin(1)
        chosen.append(i)
        taken[torch.arange(r, device=features.device), i] = True
        running = running + features[torch.arange(r, device=features.device), i].unsqueeze(1)
    return torch.stack(chosen, 1) if chosen else torch.zeros((r, 0), dtype=torch.int64, device=features.device)


def nme_scores(features: torch.Tensor, means: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """-squared distances (R, N, K) of normalised ``features`` (R, N, D) to the class ``means``
    (R, K, D); classes not ``seen`` (K,) get -inf."""
    f = normalize(features)
    d = f.pow(2).sum(-1, keepdim=True) - 2 * torch.bmm(f, means.transpose(1, 2)) + means.pow(2).sum(-1).unsqueeze(1)
    return (-d).masked_fill(~seen, float("-inf"))


class ICaRL(Method):
    name = "icarl"
    exemplar_memory = True
    group_by_buffer_size = True  # training set = task samples + exemplars: equal sizes per buffer size
    reads_task_rows = True  # adds its exemplars to the task's (n,) rows
    mask_acts_on = ()  # no softmax cross-entropy
    options = {"wd": 0.0}
    option_ranges = {"wd": ">= 0"}
    loss_terms_names = ("bce", "l2")
    run_notes = (
        "icarl: no softmax cross-entropy (sigmoid BCE with distillation), an unmasked reference baseline; "
        "accuracies from the nearest-mean-of-exemplars classifier",
    )

    @staticmethod
    def _cap(ctx: MethodContext) -> int:
        per_class = torch.bincount(ctx.data.train_y, minlength=ctx.data.n_classes)
        return min(max(ctx.buffer_sizes) // ctx.classes_per_task, int(per_class.min()))

    @staticmethod
    def _per_class(ctx: MethodContext, n_seen_classes: int) -> int:
        return min(max(ctx.buffer_sizes) // n_seen_classes, ICaRL._cap(ctx))

    def init_state(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        device = ctx.data.device
        return {
            "exemplars": torch.full(
                (ctx.n_runs, ctx.data.n_classes, self._cap(ctx)), -1, dtype=torch.int64, device=device
            ),
            "class_means": torch.zeros((ctx.n_runs, ctx.data.n_classes, ctx.net.feature_dim), device=device),
        }

    def task_rows(self, ctx: MethodContext, rows: torch.Tensor) -> torch.Tensor | None:
        if ctx.task == 0:
            return None
        past = ctx.task * ctx.classes_per_task
        m = self._per_class(ctx, past)
        exemplars = ctx.state["exemplars"][:, :past, :m].reshape(ctx.n_runs, -1)
        return torch.cat([rows.unsqueeze(0).expand(ctx.n_runs, -1), exemplars], 1)

    def loss_terms(self, step: Step) -> MethodOutput:
        batch = step.stream
        z = step.forward(batch)
        target = F.one_hot(batch.y, z.shape[-1]).to(z.dtype)
        if step.task > 0:
            teacher = {k[len(TEACHER) :]: v for k, v in step.state.items() if k.startswith(TEACHER)}
            teacher_bn = {k[len(TEACHER_BN) :]: v for k, v in step.state.items() if k.startswith(TEACHER_BN)}
            with torch.no_grad():
                old, _ = step.net.forward(teacher, teacher_bn, batch.x, train=False)
            target = torch.where(step.class_task < step.task, torch.sigmoid(old), target)
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none").mean(-1)
        terms = {"bce": per_run_mean(bce, batch.valid)}
        wd = float(step.options["wd"])
        l2 = sum(p.pow(2).flatten(1).sum(1) for p in step.params.values())
        terms["l2"] = wd * l2 if wd else torch.zeros_like(terms["bce"])
        return MethodOutput(terms)

    def end_task(self, ctx: MethodContext) -> TaskEnd:
        data, t, c = ctx.data, ctx.task, ctx.classes_per_task
        seen = (t + 1) * c
        m = self._per_class(ctx, seen)
        state = {k: v for k, v in ctx.state.items() if not k.startswith((TEACHER, TEACHER_BN))}
        state.update({TEACHER + k: v.detach().clone() for k, v in ctx.params.items()})
        state.update({TEACHER_BN + k: v.detach().clone() for k, v in ctx.bn.items()})
        exemplars = ctx.state["exemplars"].clone()
        exemplars[:, :, m:] = -1
        for cls in range(t * c, seen):
            rows = torch.nonzero(data.train_y == cls).flatten()
            x = prepare_inputs(data.train_x[rows], data.spec)
            features = normalize(ctx.forward(x.unsqueeze(0).expand(ctx.n_runs, *x.shape), features=True))
            exemplars[:, cls, :m] = rows[herding(features, m)]
        state["exemplars"] = exemplars
        state["class_means"] = self._class_means(ctx, exemplars[:, :seen, :m], state["class_means"])
        return TaskEnd(state)

    @staticmethod
    def _class_means(ctx: MethodContext, exemplars: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """Normalised mean of the exemplars' normalised features, averaged with their flipped copies'."""
        r, k, m = exemplars.shape
        x = prepare_inputs(ctx.data.train_x[exemplars.reshape(r, -1)], ctx.data.spec)  # (R, k*m, C, H, W)
        plain = normalize(ctx.forward(x, features=True)).view(r, k, m, -1).mean(2)
        flipped = normalize(ctx.forward(x.flip(-1), features=True)).view(r, k, m, -1).mean(2)
        out = means.clone()
        out[:, :k] = normalize((plain + flipped) / 2)
        return out

    def classifier(self, ctx: MethodContext):
        means = ctx.state["class_means"]
        seen = torch.arange(ctx.data.n_classes, device=means.device) < (ctx.task + 1) * ctx.classes_per_task

        def scores(x: torch.Tensor) -> torch.Tensor:
            features, _ = ctx.net.features(ctx.params, ctx.bn, x, train=False)
            return nme_scores(features, means, seen)

        return scores
