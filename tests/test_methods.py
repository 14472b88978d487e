"""The defining behaviour of X-DER, iCaRL, A-GEM, GDumb and the mask's rivals (SS-IL, LODE, LODE-DER++,
ER-LAS, ER-AML, WA, BiC), the cosine head, and where a mask may act (lockstep and resume of these methods:
tests/test_lockstep.py and tests/test_checkpoint.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_config

import clbench.engine.loop as loop
from clbench import SyntheticOptions, train_runs
from clbench.data.loading import load_benchmark, prepare_inputs
from clbench.lockstep.backbones import BatchedMLP, cosine_logits
from clbench.lockstep.buffer import Memory
from clbench.methods import MethodContext, get_method
from clbench.methods.agem import AGEM, project
from clbench.methods.gdumb import GDumb, greedy_balanced_slots
from clbench.methods.icarl import ICaRL
from clbench.methods.xder import XDER, damp, first_occurrence

SYN = SyntheticOptions(train_per_class=40, test_per_class=10)


def context(method, data, net, params, state, memory, task, sizes, options=None, seed=0):
    return MethodContext(
        task=task,
        data=data,
        net=net,
        params=params,
        bn={},
        state=state,
        memory=memory,
        rngs=tuple(np.random.default_rng(seed + r) for r in range(len(sizes))),
        buffer_sizes=tuple(sizes),
        batch_size=10,
        options=options or dict(method.options),
    )


def mlp_group(data, n_runs, seed=0):
    net = BatchedMLP(64, data.n_classes)
    params, _ = net.init([torch.Generator().manual_seed(seed + r) for r in range(n_runs)])
    return net, {k: v.detach() for k, v in params.items()}


# -- A-GEM -----------------------------------------------------------------------------------------


def test_agem_projection_never_points_against_the_reference():
    g = torch.Generator().manual_seed(0)
    grads = (torch.randn(6, 5, 4, generator=g), torch.randn(6, 3, generator=g))
    ref = (torch.randn(6, 5, 4, generator=g), torch.randn(6, 3, generator=g))
    ref[0][5].zero_()
    ref[1][5].zero_()  # a run whose memory is empty: zero reference
    dot = lambda a, b: sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))  # noqa: E731
    before = dot(grads, ref)
    assert (before < 0).any() and (before > 0).any()
    applied = project(grads, ref)
    after = dot(applied, ref)
    scale = torch.sqrt(dot(applied, applied) * dot(ref, ref)).clamp(min=1e-12)
    assert (after >= -1e-6 * scale).all()  # never against the reference (0 up to rounding where projected)
    unchanged = before >= 0
    for a, x in zip(applied, grads):
        torch.testing.assert_close(a[unchanged], x[unchanged], rtol=0, atol=0)


def test_agem_applied_gradient_agrees_with_the_reference_in_training(monkeypatch):
    seen = []
    original = AGEM.edit_gradients

    def recording(self, step, grads, reference):
        applied = original(self, step, grads, reference)
        seen.append(tuple(sum((x * y).flatten(1).sum(1) for x, y in zip(a, reference)) for a in (grads, applied)))
        return applied

    monkeypatch.setattr(AGEM, "edit_gradients", recording)
    train_runs(
        [synthetic_config("agem", seed=s, buffer=40, synthetic=SYN, mask=m) for s, m in ((0, None), (1, -math.inf))]
    )
    assert seen, "A-GEM never had a reference gradient"
    before = torch.stack([b for b, _ in seen])
    after = torch.stack([a for _, a in seen])
    assert (before < 0).any()  # the projection had work to do
    assert (after >= -1e-5 * before.abs().clamp(min=1)).all()


def test_agem_memory_holds_m_over_t_random_samples_per_task():
    data = load_benchmark("synthetic", synthetic=SYN)
    net, params = mlp_group(data, 2)
    sizes = (10, 25)
    x = torch.zeros((2, 26, 1, 8, 8), dtype=torch.uint8)
    memory = Memory(
        x,
        torch.zeros((2, 26), dtype=torch.int64),
        torch.zeros((2, 26), dtype=torch.int64),
        None,
        np.zeros(2, dtype=np.int64),
    )
    for t in range(2):
        end = AGEM().end_task(context(AGEM(), data, net, params, {}, memory, t, sizes))
        memory = end.memory
    assert memory.held.tolist() == [2 * 2, 5 * 2]  # floor(M / T) per task, T = 5
    for r, q in enumerate((2, 5)):
        assert sorted(set(data.class_task[memory.y[r, : 2 * q]].tolist())) == [0, 1]
        assert (data.class_task[memory.y[r, :q]] == 0).all() and (data.class_task[memory.y[r, q : 2 * q]] == 1).all()


# -- iCaRL -----------------------------------------------------------------------------------------


def test_icarl_nearest_mean_of_exemplars_equals_the_one_computed_by_hand():
    data = load_benchmark("synthetic", synthetic=SYN)
    net, params = mlp_group(data, 3)
    method = ICaRL()
    ctx = context(method, data, net, params, {}, None, 0, (20, 20, 20))
    state = method.init_state(ctx)
    for t in range(2):
        state = method.end_task(context(method, data, net, params, state, None, t, (20, 20, 20))).state
    m = 20 // 4  # exemplars per class once 4 classes are seen
    ex = state["exemplars"]
    assert (ex[:, :4, :m] >= 0).all() and (ex[:, :4, m:] == -1).all() and (ex[:, 4:] == -1).all()
    assert (data.train_y[ex[:, :4, :m]] == torch.arange(4).view(1, 4, 1)).all()  # each class's own images
    scores = method.classifier(context(method, data, net, params, state, None, 1, (20, 20, 20)))
    x = prepare_inputs(data.test_x, data.spec)
    predicted = scores(x.unsqueeze(0).expand(3, *x.shape)).argmax(-1)
    for r in range(3):
        run = {k: v[r : r + 1] for k, v in params.items()}

        def feature(images, run=run):
            f, _ = net.features(run, {}, prepare_inputs(images, data.spec).unsqueeze(0), train=False)
            return f[0] / f[0].norm(dim=-1, keepdim=True)

        means = []
        for c in range(4):
            imgs = data.train_x[ex[r, c, :m]]
            mean = (feature(imgs).mean(0) + feature(imgs.flip(-1)).mean(0)) / 2
            means.append(mean / mean.norm())
        means = torch.stack(means)
        test = feature(data.test_x)
        by_hand = torch.stack([((test - mu) ** 2).sum(-1) for mu in means], 1).argmin(1)
        assert torch.equal(predicted[r], by_hand)


def test_icarl_herding_picks_the_points_that_keep_the_running_mean_closest():
    from clbench.methods.icarl import herding

    f = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.1, 0.0]]])  # mean (0, 0.6)
    chosen = herding(f, 3)[0].tolist()
    assert chosen[0] == 0  # (0, 0) is nearest to the mean
    # By hand: after (0,0), the pair whose mean is nearest (0, 0.6) adds (0.1, 0) (|(0.05,0)-(0,0.6)|),
    # then the third point makes the triple's mean nearest: (0, 3) brings it to (0.033, 1.0).
    assert chosen == [0, 4, 3]


def test_icarl_takes_no_mask():
    with pytest.raises(ValueError, match="icarl has no softmax cross-entropy"):
        synthetic_config("icarl", mask=-math.inf).resolve()


# -- GDumb -----------------------------------------------------------------------------------------


def test_gdumb_greedy_sampler_keeps_the_memory_class_balanced():
    rng = np.random.default_rng(0)
    size = 50
    held, n_seen, slot_class = 0, 0, np.full(50, -1)
    for task in range(5):
        labels = rng.permutation(np.repeat(np.arange(2 * task, 2 * task + 2), 300))
        slots = greedy_balanced_slots(np.random.default_rng(task), labels, slot_class, held, size, batch_size=10)
        for i, s in enumerate(slots):
            if s >= 0:
                slot_class[s] = labels[i]
        n_seen += len(labels)
        held = min(n_seen, size)
        counts = np.bincount(slot_class[:held], minlength=10)[: 2 * task + 2]
        assert counts.sum() == size and counts.max() - counts.min() <= 1, counts


def test_gdumb_memory_is_class_balanced_when_it_is_refit(monkeypatch):
    counts = []
    original = loop.refit

    def recording(group, st, *args, **kw):
        held = st.buffer.available()
        counts.append([np.bincount(st.buffer.y[r, :h].numpy(), minlength=10) for r, h in enumerate(held)])
        return original(group, st, *args, **kw)

    monkeypatch.setattr(loop, "refit", recording)
    cfgs = [
        synthetic_config("gdumb", seed=s, buffer=30, synthetic=SYN, options={"fitting_epochs": 2}) for s in range(2)
    ]
    train_runs(cfgs)
    assert len(counts) == 5
    for task, runs in enumerate(counts):
        for c in runs:
            seen = c[: 2 * (task + 1)]
            assert c.sum() == 30 and seen.max() - seen.min() <= 1 and c[2 * (task + 1) :].sum() == 0, (task, c)


def test_gdumb_lr_schedule_warm_start_then_cosine_restarts():
    lr = torch.tensor([0.05])
    got = [float(GDumb().refit_lr(e, lr, {"minlr": 5e-4})) for e in range(8)]
    assert got[0] == pytest.approx(0.005) and got[1] == pytest.approx(0.05)
    # Scheduler steps k = epoch - 1, cycles of 1, 2, 4 epochs restarting at the maximum:
    mid = 5e-4 + (0.05 - 5e-4) / 2
    assert got[2:5] == pytest.approx([0.05, mid, 0.05])
    assert got[5] == pytest.approx(5e-4 + (0.05 - 5e-4) * (1 + math.cos(math.pi / 4)) / 2)


def test_gdumb_stream_mask_cannot_act():
    with pytest.raises(ValueError, match="valid placements for gdumb are buffer$"):
        synthetic_config("gdumb", mask=-math.inf, on="stream").resolve()
    assert synthetic_config("gdumb", mask=-math.inf, on="buffer").resolve().mask.on == "buffer"


# -- X-DER -----------------------------------------------------------------------------------------


def test_xder_damping_on_a_hand_made_example():
    block = torch.tensor([[2.0, 4.0], [1.0, 0.5], [3.0, -1.0]])
    gt = torch.tensor([2.0, 3.0, 6.0])
    out = damp(block, gt, 0.85)
    # Row 0: max 4 > 2: times 0.85 * 2 / 4; rows 1 and 2: max below the class's logit: unchanged.
    torch.testing.assert_close(out, torch.tensor([[0.85, 1.7], [1.0, 0.5], [3.0, -1.0]]))


def test_xder_first_occurrence_of_slots():
    slots = torch.tensor([[3, 1, 3, -1, 1, 2]])
    assert first_occurrence(slots).tolist() == [[True, True, False, False, False, True]]


def _xder_step(t, stored, counts, u, slots, y, outputs):
    """A Step carrying what _update_logits reads."""
    from clbench.lockstep.step import LossLayer, Step
    from clbench.runs.mask import MaskSpec

    class_task = torch.arange(6) // 2
    loss = LossLayer([MaskSpec()], class_task)
    state = {"logits": stored, "logit_task": torch.zeros(stored.shape[:2], dtype=torch.int64), "counts": counts}
    return (
        Step(
            task=t,
            stream=None,
            replay=(),
            alpha=torch.ones(1),
            beta=torch.ones(1),
            seen_classes=None,
            forward=None,
            loss=loss,
            state=state,
            replay_slots=(),
            draws={"u": u},
            options=dict(XDER.options),
        ),
        slots,
        y,
        outputs,
    )


def test_xder_online_update_rewrites_future_columns_with_probability_one_over_count():
    # 6 classes, 3 tasks, task 1: columns [2, 6) of past-task rows are rewritten.
    stored = torch.arange(5 * 6, dtype=torch.float32).view(1, 5, 6) / 10  # slot s, class c: (6s + c) / 10
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0]])
    slots = torch.tensor([[0, 1, 2, 0, 3]])  # slot 0 twice: counted once
    y = torch.tensor([[0, 1, 0, 0, 2]])  # the row of slot 3 is of the current task: never rewritten
    u = torch.tensor([[0.9, 0.6, 0.3, 0.0, 0.0]])
    outputs = torch.full((1, 5, 6), 10.0)
    old = stored[0, slots[0]].unsqueeze(0)
    step, *_ = _xder_step(1, stored, counts, u, slots, y, outputs)
    once = first_occurrence(slots)
    new = XDER()._update_logits(step, slots, y, once, outputs, old)
    # Counters: slots 0, 1, 2 go to 1, 2, 4; written where u * count < 1: slot 0 (0.9), slot 1 (1.2: no),
    # slot 2 (1.2: no).
    assert new["counts"][0, :4].tolist() == [1.0, 2.0, 4.0, 0.0]
    gamma = XDER.options["gamma"]
    expected0 = stored[0, 0].clone()
    expected0[2:] = 10.0 * gamma * stored[0, 0, 0] / 10.0  # damped against the stored logit of class 0
    torch.testing.assert_close(new["logits"][0, 0], expected0)
    torch.testing.assert_close(new["logits"][0, 1:4], stored[0, 1:4])
    assert new["logit_task"][0, :4].tolist() == [1, 0, 0, 0]


def test_xder_end_of_task_rebuilds_a_class_balanced_memory():
    data = load_benchmark("synthetic", synthetic=SYN)
    net, params = mlp_group(data, 2)
    method = XDER()
    size = 20
    empty = Memory(
        torch.zeros((2, size + 1, 1, 8, 8), dtype=torch.uint8),
        torch.zeros((2, size + 1), dtype=torch.int64),
        torch.zeros((2, size + 1), dtype=torch.int64),
        None,
        np.zeros(2, dtype=np.int64),
    )
    state = method.init_state(context(method, data, net, params, {}, empty, 0, (size, size)))
    memory = empty
    for t in range(3):
        end = method.end_task(context(method, data, net, params, state, memory, t, (size, size), seed=10 * t))
        previous, memory, state = memory, end.memory, end.state
        seen = 2 * (t + 1)
        assert memory.held.tolist() == [size, size]
        for r in range(2):
            counts = np.bincount(memory.y[r, :size].numpy(), minlength=10)
            assert (
                counts[:seen].min() >= size // seen
                and counts[:seen].max() <= size // seen + 1
                and counts[seen:].sum() == 0
            )
            if t > 0:  # kept rows: the first floor(M / seen) of each old class, in storage order, class by class
                keep = size // seen
                for c in range(2 * t):
                    old_rows = previous.x[r, :size][previous.y[r, :size] == c][:keep]
                    torch.testing.assert_close(memory.x[r][memory.y[r] == c][:keep][:keep], old_rows)
        # Every older row's columns [tC, K) are the damped outputs of the current network.
        if t > 0:
            x = prepare_inputs(memory.x[:, :size], data.spec)
            out, _ = net.forward(params, {}, x, train=False)
            y = memory.y[:, :size]
            older = data.class_task[y] < t
            gt = state["logits"][:, :size].gather(-1, y.unsqueeze(-1)).squeeze(-1)
            expected = damp(out[..., 2 * t :], gt, method.options["gamma"])
            torch.testing.assert_close(state["logits"][:, :size, 2 * t :][older], expected[older], rtol=1e-5, atol=1e-5)
            assert (state["logit_task"][:, :size][older] == t).all()
        assert (state["counts"] == 0).all()


def test_xder_published_is_the_minus_inf_mask():
    cfg = synthetic_config("xder", buffer=20).resolve()
    assert any("X-DER as published is --mask -inf" in n for n in cfg.notes)
    assert any("without the SupCon consistency term" in n for n in cfg.notes)
    with pytest.raises(ValueError, match="valid placements for xder are stream$"):
        synthetic_config("xder", mask=-2.0, on="buffer").resolve()


# -- configs, presets, groups ----------------------------------------------------------------------


def test_methods_that_group_by_buffer_size_never_share_a_group_across_sizes():
    from clbench.sweep.plan import plan_groups

    cfgs = [
        synthetic_config(m, seed=s, buffer=b).resolve() for m in ("xder", "agem") for s in range(2) for b in (10, 20)
    ]
    groups = plan_groups(cfgs)
    assert sorted(len(g) for g in groups) == [2, 2, 4]  # xder: one group per buffer size; agem: one group


def test_new_method_presets_and_fallbacks_are_named_in_the_notes():
    from clbench import RunConfig

    xder = RunConfig(method="xder", buffer_size=200).resolve()
    assert (xder.lr, xder.minibatch_size, xder.alpha, xder.beta) == (0.03, 128, 0.2, 1.0)
    assert "no xder preset for seq-mnist: using the derpp row" in xder.notes
    icarl = RunConfig(method="icarl", buffer_size=20).resolve()
    assert icarl.lr == 0.1 and icarl.minibatch_size == 0 and dict(icarl.options) == {"wd": 0.0}
    assert "buffer 20 (< 200) has no preset: using the buffer-200 row" in icarl.notes
    assert dict(RunConfig(method="icarl", benchmark="seq-cifar10", buffer_size=500).resolve().options) == {"wd": 1e-5}
    agem = RunConfig(method="agem", benchmark="seq-tinyimg", buffer_size=500).resolve()
    assert (agem.lr, agem.minibatch_size) == (0.01, 32)
    gdumb = RunConfig(
        method="gdumb", buffer_size=500, mask=synthetic_config("gdumb", mask=-1.0, on="buffer").mask
    ).resolve()
    assert gdumb.lr == 0.05 and dict(gdumb.options)["fitting_epochs"] == 256
    assert any(n.startswith("no gdumb preset for seq-mnist: using Mammoth's gdumb defaults") for n in gdumb.notes)
    big = RunConfig(method="xder", benchmark="seq-cifar100", buffer_size=2000).resolve()
    assert (big.alpha, big.beta) == (0.6, 0.9) and dict(big.options)["margin"] == 0.2


def test_options_are_checked_and_part_of_the_identity_and_group():
    a = synthetic_config("xder").resolve()
    b = synthetic_config("xder", options={"gamma": "0.5"}).resolve()
    assert dict(b.options)["gamma"] == 0.5 and "overridden: option gamma" in b.notes[-1]
    assert a.identity() != b.identity() and a.group_key() != b.group_key()
    with pytest.raises(ValueError, match="unknown option 'gama' for xder: its options are gamma"):
        synthetic_config("xder", options={"gama": 1}).resolve()
    with pytest.raises(ValueError, match="its options are none"):
        synthetic_config("er", options={"x": 1}).resolve()


# -- the cosine head -------------------------------------------------------------------------------


def test_cosine_head_is_ten_times_the_cosine_and_bias_free():
    g = torch.Generator().manual_seed(0)
    f, w = torch.randn(2, 5, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    by_hand = torch.stack(
        [
            torch.stack(
                [
                    torch.stack(
                        [
                            10 * (f[r, n] @ w[r, k]) / ((f[r, n].norm() + 1e-5) * (w[r, k].norm() + 1e-5))
                            for k in range(3)
                        ]
                    )
                    for n in range(5)
                ]
            )
            for r in range(2)
        ]
    )
    torch.testing.assert_close(cosine_logits(f, w), by_hand)
    net = BatchedMLP(64, 10, head="cosine")
    params, _ = net.init([torch.Generator().manual_seed(0)])
    assert "b2" not in params and "w2" in params
    logits, _ = net.forward(params, {}, torch.randn(1, 4, 64), train=False)
    assert logits.abs().max() <= 10.0 + 1e-4


def test_head_is_recorded_and_the_linear_default_keeps_identities():
    linear = synthetic_config("er_ace").resolve()
    cosine = synthetic_config("er_ace", head="cosine").resolve()
    assert "head" not in linear.to_dict() and cosine.to_dict()["head"] == "cosine"
    assert linear.head == "linear" and linear.identity() != cosine.identity()
    assert linear.group_key() != cosine.group_key()
    assert any("cosine classifier head" in n for n in cosine.notes)
    with pytest.raises(ValueError, match="valid heads are linear, cosine"):
        synthetic_config("er_ace", head="round").resolve()


def test_every_new_method_learns_on_synthetic_data():
    cfgs = [
        synthetic_config(m, seed=0, buffer=30, synthetic=SYN, options={"fitting_epochs": 8} if m == "gdumb" else None)
        for m in ("xder", "icarl", "agem", "gdumb")
    ]
    for cfg, res in zip(cfgs, train_runs(cfgs)):
        assert res.metrics["faa_task_il"] > 60, (cfg.method, res.metrics)
        assert set(res.train_loss) == set(get_method(cfg.method).loss_terms_names) | {"total"}


@pytest.mark.parametrize(
    "method,kw",
    [
        ("xder", {"options": {"gamma": 0.5}}),
        ("icarl", {}),
        ("gdumb", {"mask": -1.0, "on": "buffer"}),
        ("er_ace", {"head": "cosine"}),
    ],
)
def test_new_configs_round_trip_through_json(method, kw):
    import json

    from clbench import ResolvedConfig

    cfg = synthetic_config(method, **kw).resolve()
    back = ResolvedConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.identity() == cfg.identity() and back.group_key() == cfg.group_key()


# -- the rivals of the mask: SS-IL, LODE, LODE-DER++, ER-LAS, ER-AML ------------------------------


def hand_step(task, stream_y, replay_ys=(), *, options, logits, state=None, net=None, n_tasks=3, c=2, valid=None):
    """A Step of one run with given labels; ``logits`` maps each batch's row count to fixed logits."""
    from clbench.lockstep.step import Batch, LossLayer, Step
    from clbench.runs.mask import MaskSpec

    class_task = torch.arange(n_tasks * c) // c

    def batch(y, from_buffer, v=None):
        y = torch.tensor([y])
        return Batch(torch.zeros(1, y.shape[1], 1), y, class_task[y], torch.full((y.shape[1],), from_buffer), valid=v)

    stream = batch(stream_y, False)
    replay = tuple(batch(y, True, valid) for y in replay_ys)
    return Step(
        task=task,
        stream=stream,
        replay=replay,
        alpha=torch.tensor([0.3]),
        beta=torch.tensor([0.7]),
        seen_classes=torch.zeros(1, n_tasks * c, dtype=torch.bool),
        forward=lambda b: logits[len(b)],
        loss=LossLayer([MaskSpec(None)], class_task),
        state=state or {},
        options=options,
        net=net,
    )


def test_ss_il_stream_term_is_the_masked_softmax_at_minus_inf_and_replay_is_past_only():
    from clbench.lockstep.step import concat
    from clbench.masking import masked_cross_entropy, task_active_mask
    from clbench.methods.ss_il import SSIL

    g = torch.Generator().manual_seed(0)
    stream_y, replay_y = [2, 3, 3, 2], [0, 1, 1]
    z = torch.randn(1, 7, 6, generator=g, requires_grad=True)
    old = torch.randn(1, 7, 6, generator=g)

    class Teacher:
        def forward(self, params, bn, x, train):
            assert not train and set(params) == {"w"}
            return old, bn

    step = hand_step(
        1, stream_y, (replay_y,), options={"distill": 1.0}, logits={7: z}, state={"teacher.w": torch.ones(1)}
    )
    step = dataclasses.replace(step, net=Teacher())
    out = SSIL().loss_terms(step)
    batch = concat(step.stream, step.replay[0])
    ct = step.class_task
    stream = masked_cross_entropy(z[0, :4], batch.y[0, :4], task_active_mask(batch.task[0, :4], ct), -math.inf, "sum")
    replay = torch.nn.functional.cross_entropy(z[0, 4:, :2], batch.y[0, 4:], reduction="sum")  # past classes only
    torch.testing.assert_close(out.terms["ce"], ((stream + replay) / 7).view(1))
    # Equal to the stream rows' softmax over the current task's classes alone: the slice.
    by_slice = torch.nn.functional.cross_entropy(z[0, :4, 2:4], batch.y[0, :4] - 2, reduction="sum")
    torch.testing.assert_close(stream, by_slice)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(z[0, :, :2] / 2, -1), torch.softmax(old[0, :, :2] / 2, -1), reduction="batchmean"
    )
    torch.testing.assert_close(out.terms["kd"], 4 * kl.view(1))
    # Stream rows: gradient on the current task's classes only; replayed rows: on the past ones only.
    (grad,) = torch.autograd.grad(out.terms["ce"].sum(), z)
    assert (grad[0, :4, :2] == 0).all() and (grad[0, :4, 4:] == 0).all() and (grad[0, :4, 2:4] != 0).all()
    assert (grad[0, 4:, 2:] == 0).all() and (grad[0, 4:, :2] != 0).all()
    with pytest.raises(ValueError, match="ss_il has no softmax cross-entropy for a mask to act on"):
        synthetic_config("ss_il", mask=-math.inf).resolve()


def test_ss_il_memory_keeps_ceil_m_over_s_per_class_and_drops_from_the_largest():
    from clbench.methods.ss_il import SSIL

    data = load_benchmark("synthetic", synthetic=SYN)
    method = SSIL()
    net, params = mlp_group(data, 2)
    sizes = (5, 30)
    cap = max(sizes) + 1
    empty = Memory(
        torch.zeros((2, cap, *data.train_x.shape[1:]), dtype=data.train_x.dtype),
        torch.zeros((2, cap), dtype=torch.int64),
        torch.zeros((2, cap), dtype=torch.int64),
        None,
        np.zeros(2, dtype=np.int64),
    )
    end0 = method.end_task(context(method, data, net, params, {}, empty, 0, sizes))
    m0 = end0.memory
    assert list(m0.held) == [5, 30]
    # Task 0, M = 5: ceil(5 / 2) = 3 per class, 6 > 5: class 1 (the larger in a tie) gives one back.
    assert m0.y[0, :5].tolist() == [0, 0, 0, 1, 1]
    first = [int(i) for i in torch.nonzero(data.train_y == 0).flatten()[:3]]
    assert torch.equal(m0.x[0, :3], data.train_x[first])
    assert torch.equal(end0.state["teacher.w1"], params["w1"])
    end1 = method.end_task(context(method, data, net, params, end0.state, m0, 1, sizes))
    m1 = end1.memory
    # Task 1, M = 5: ceil(5 / 4) = 2 per class (class 1 has 2 already), 8 > 5: classes 1, 2, 3 give one back.
    assert m1.y[0, :5].tolist() == [0, 0, 1, 2, 3]
    # M = 30: ceil(30 / 4) = 8 per class, 32 > 30: classes 2 and 3 give one back.
    assert torch.bincount(m1.y[1, : m1.held[1]], minlength=4).tolist() == [8, 8, 7, 7]
    assert (m1.task[1, : m1.held[1]] == data.class_task[m1.y[1, : m1.held[1]]]).all()


def test_lode_terms_sum_to_the_stream_cross_entropy_when_rho_over_t_is_one():
    from clbench.methods.lode import LODE, lode_stream_terms

    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 5, 6, generator=g)
    y = [4, 5, 4, 5, 5]
    for t in (1, 2):
        step = hand_step(t, [c - 2 * (2 - t) for c in y], options={"rho": float(t)}, logits={})
        intra, inter = lode_stream_terms(step, z, rho=float(t))  # rho / t = 1
        plain = torch.nn.functional.cross_entropy(z[0], step.stream.y[0]).view(1)
        torch.testing.assert_close(intra + inter, plain)
        old = t * 2
        by_hand = torch.nn.functional.cross_entropy(z[0, :, old:], step.stream.y[0] - old).view(1)
        torch.testing.assert_close(intra, by_hand)  # a softmax over the current and future classes
    # LODE-ER halves the loss once something is replayed; the weight of inter is rho / t.
    zb = torch.randn(1, 3, 6, generator=g)
    step = hand_step(2, [4, 5, 4, 5, 5], ([0, 1, 2],), options={"rho": 0.1}, logits={5: z, 3: zb})
    out = LODE().loss_terms(step)
    intra, inter = lode_stream_terms(step, z, rho=0.1)
    torch.testing.assert_close(out.terms["inter"], inter / 2)
    torch.testing.assert_close(inter, 0.1 / 2 * (z[0].logsumexp(-1) - z[0, :, 4:].logsumexp(-1)).mean().view(1))
    torch.testing.assert_close(
        out.terms["replay_ce"], torch.nn.functional.cross_entropy(zb[0], torch.tensor([0, 1, 2])).view(1) / 2
    )


def test_lode_derpp_is_derpp_on_task_0_and_adds_the_decoupled_terms_after():
    from clbench.methods.derpp import DERpp
    from clbench.methods.lode import lode_stream_terms
    from clbench.methods.lode_derpp import LODEDERpp

    g = torch.Generator().manual_seed(2)
    z, z1, z2 = (torch.randn(1, n, 6, generator=g) for n in (4, 3, 2))
    stored = torch.randn(1, 3, 6, generator=g)
    logits = {4: z, 3: z1, 2: z2}
    step = hand_step(0, [0, 1, 1, 0], ([0, 1, 0], [1, 0]), options={"rho": 0.05}, logits=logits)
    step = dataclasses.replace(step, replay=(dataclasses.replace(step.replay[0], logits=stored), step.replay[1]))
    ours, theirs = LODEDERpp().loss_terms(step), DERpp().loss_terms(step)
    for k, v in theirs.terms.items():
        torch.testing.assert_close(ours.terms[k], v, rtol=0, atol=0)
    assert (ours.terms["inter"] == 0).all() and ours.stream_logits is z
    step1 = dataclasses.replace(step, task=1, stream=hand_step(1, [2, 3, 3, 2], options={}, logits={}).stream)
    out = LODEDERpp().loss_terms(step1)
    intra, inter = lode_stream_terms(step1, z, 0.05)
    torch.testing.assert_close(out.terms["ce"], intra)
    torch.testing.assert_close(out.terms["inter"], inter)
    torch.testing.assert_close(out.terms["logit_mse"], 0.3 * (z1 - stored).pow(2).mean().view(1))


def test_er_las_adds_tau_log_label_counts_of_the_window_and_excludes_absent_classes():
    from clbench.methods.er_las import ERLAS

    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 5, 6, generator=g, requires_grad=True)
    prev = torch.tensor([[[0.0, 0, 0, 0, 3, 0], [1.0, 0, 0, 0, 0, 0]]])  # (R, window 2, K): older, last step
    step = hand_step(1, [2, 2, 3], ([0, 1],), options={"tau": 0.5, "window": 2}, logits={5: z}, state={"counts": prev})
    out = ERLAS().loss_terms(step)
    now = torch.tensor([1.0, 1, 2, 1, 0, 0])
    torch.testing.assert_close(out.state["counts"], torch.stack([prev[0, 1], now]).unsqueeze(0))
    record = prev[0, 1] + now  # the last two steps: class 0 twice, class 4 dropped out of the window
    adjusted = z[0] + 0.5 * torch.log(record)  # ln 0 = -inf: classes 4 and 5 excluded
    y = torch.tensor([2, 2, 3, 0, 1])
    torch.testing.assert_close(out.terms["ce"], torch.nn.functional.cross_entropy(adjusted, y).view(1))
    (grad,) = torch.autograd.grad(out.terms["ce"].sum(), z)
    assert (grad[0, :, 4:] == 0).all()
    # tau = 0 is ER: no adjustment, nothing excluded.
    plain = ERLAS().loss_terms(dataclasses.replace(step, options={"tau": 0.0, "window": 2}))
    torch.testing.assert_close(plain.terms["ce"], torch.nn.functional.cross_entropy(z[0], y).view(1))


def test_er_aml_supcon_and_its_positive_negative_pairs_by_hand():
    from clbench.methods.er_aml import ERAML, normalize, pick, supcon

    g = torch.Generator().manual_seed(4)
    # pick: the candidate at rank floor(u n) among the true ones.
    cand = torch.tensor([[[True, False, True, True], [False, False, False, False]]])
    assert pick(cand, torch.tensor([[0.0, 0.5]])).tolist() == [[0, 0]]
    assert pick(cand, torch.tensor([[0.5, 0.5]])).tolist() == [[2, 0]]
    assert pick(cand, torch.tensor([[0.99, 0.5]])).tolist() == [[3, 0]]
    # SupCon, loop by loop: anchors 0 and 2 kept, anchor 1 dropped.
    a, c = normalize(torch.randn(1, 3, 5, generator=g)), normalize(torch.randn(1, 6, 5, generator=g))
    ay, cy = torch.tensor([[2, 3, 3]]), torch.tensor([[2, 3, 3, 3, 2, 2]])
    keep = torch.tensor([[True, False, True]])
    kept_cols = [0, 2, 3, 5]  # the kept anchors' positives (0, 2) and negatives (3, 5)
    losses = []
    for i in (0, 2):
        scores = torch.stack([a[0, i] @ c[0, j] / 0.2 for j in kept_cols])
        log_p = scores - scores.logsumexp(0)
        pos = [k for k, j in enumerate(kept_cols) if cy[0, j] == ay[0, i]]
        losses.append(-(0.2 / 0.07) * log_p[pos].mean())
    torch.testing.assert_close(supcon(a, ay, c, cy, keep, 0.2), torch.stack(losses).mean().view(1))
    # The step: positives share the class (never the row itself), negatives are another class of the task.
    stream_y, replay_y = [2, 3, 3, 2], [0, 2, 3]
    step = hand_step(1, stream_y, (replay_y,), options={"temperature": 0.2}, logits={})
    pool = dataclasses.replace(_pool(step), x=torch.arange(7.0).view(1, 7, 1))  # x: the row's index
    y = torch.tensor(stream_y)
    chosen = set()
    for seed in range(20):
        pairs, keep = ERAML._pairs(dataclasses.replace(step, draws={"seed": torch.tensor([seed])}), pool)
        assert keep.all()
        assert (pairs.y[0, :4] == y).all() and (pairs.x[0, :4, 0] != torch.arange(4.0)).all()
        assert (pairs.y[0, 4:] != y).all() and (pairs.task[0] == 1).all()
        chosen.add(tuple(pairs.x[0, :, 0].tolist()))
    assert len(chosen) > 1  # the draws choose among the candidates
    with pytest.raises(ValueError, match="valid placements for er_aml are buffer$"):
        synthetic_config("er_aml", mask=-math.inf).resolve()


def test_wa_aligns_the_new_rows_to_the_old_rows_mean_norm_and_changes_nothing_else():
    from clbench.lockstep.resnet import BatchedResNet18
    from clbench.methods.wa import WA, align_weights, head_weight

    data = load_benchmark("synthetic", synthetic=SYN)  # 5 tasks of 2 classes
    net, params = mlp_group(data, 2)
    params = {k: v * 1.5 if k == "w2" else v for k, v in params.items()}
    params["w2"][1, 2:4] *= 3.0  # run 1's new classes grew: gamma < 1
    ctx = context(WA(), data, net, params, {}, None, 1, (10, 10))
    ended = WA().end_task(ctx)
    out = ended.params
    name, axis = head_weight(params)
    assert (name, axis) == ("w2", 1)
    norms, before = out["w2"].norm(dim=2), params["w2"].norm(dim=2)
    torch.testing.assert_close(norms[:, 2:4].mean(1), norms[:, :2].mean(1))  # aligned: equal mean norms
    assert not torch.allclose(before[:, 2:4].mean(1), before[:, :2].mean(1))  # they were not before
    ratio = out["w2"][:, 2:4] / params["w2"][:, 2:4]  # one gamma per run, on every weight of the new rows
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))
    assert ratio[1, 0, 0] < 0.5  # run 1's grown rows are scaled down
    assert torch.equal(out["w2"][:, :2], params["w2"][:, :2])  # old rows untouched
    assert torch.equal(out["w2"][:, 4:], params["w2"][:, 4:])  # future rows untouched
    for k in params:  # the rest of the network, the head's bias included
        if k != "w2":
            assert torch.equal(out[k], params[k])
    # The aligned network is the next task's teacher; task 0's end aligns nothing.
    assert torch.equal(ended.state["teacher.w2"], out["w2"])
    assert WA().end_task(dataclasses.replace(ctx, task=0)).params is None
    # The ResNet's classifier stores (R, D, K): its class axis is the last.
    resnet = BatchedResNet18(6, width=2)
    rp, _ = resnet.init([torch.Generator().manual_seed(r) for r in range(2)])
    rp = {k: v.detach() for k, v in rp.items()}
    assert head_weight(rp) == ("fc.weight", 2)
    aligned = align_weights(rp, 2, 4)["fc.weight"].norm(dim=1)
    torch.testing.assert_close(aligned[:, 2:4].mean(1), aligned[:, :2].mean(1))


def test_wa_loss_is_one_minus_p_over_s_seen_ce_plus_p_over_s_kd_at_t_2():
    from clbench.methods.wa import WA

    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 6, 6, generator=g, requires_grad=True)
    old = torch.randn(1, 6, 6, generator=g)

    class Teacher:
        def forward(self, params, bn, x, train):
            assert not train and set(params) == {"w"}
            return old, bn

    step = hand_step(1, [2, 3, 3, 2], ([0, 1],), options={}, logits={6: z}, state={"teacher.w": torch.ones(1)})
    step = dataclasses.replace(step, net=Teacher())
    out = WA().loss_terms(step)
    y = torch.tensor([2, 3, 3, 2, 0, 1])
    ce = torch.nn.functional.cross_entropy(z[0, :, :4], y)  # seen classes only (the head grown to S = 4)
    kd = -(torch.softmax(old[0, :, :2] / 2, -1) * torch.log_softmax(z[0, :, :2] / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(out.terms["ce"], (0.5 * ce).view(1))  # lambda = P / S = 2 / 4
    torch.testing.assert_close(out.terms["kd"], (0.5 * kd).view(1))
    (grad,) = torch.autograd.grad(out.terms["ce"].sum(), z)
    assert (grad[0, :, 4:] == 0).all()  # future classes get no gradient
    step0 = hand_step(0, [0, 1, 1], options={}, logits={3: z[:, :3]})
    out0 = WA().loss_terms(step0)
    ce0 = torch.nn.functional.cross_entropy(z[0, :3, :2], torch.tensor([0, 1, 1]))
    torch.testing.assert_close(out0.terms["ce"], ce0.view(1))  # task 0: plain CE over its classes
    assert float(out0.terms["kd"]) == 0.0
    assert synthetic_config("wa", mask=-math.inf, on="both").resolve().mask.on == "both"  # its CE sees both


def test_bic_bias_layer_corrects_the_newest_block_only_and_its_fit_removes_an_inflated_bias():
    from clbench.methods.bic import corrected, fit_bias

    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 40, 6, generator=g)
    block = torch.arange(6) // 2 == 1  # task 1's classes 2, 3 (task 2's, 4 and 5, are future)
    bias = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    out = corrected(z, bias, block)
    torch.testing.assert_close(out[:, :, 2:4], z[:, :, 2:4] * bias[:, :1, None] + bias[:, 1:, None])
    assert torch.equal(out[:, :, :2], z[:, :, :2]) and torch.equal(out[:, :, 4:], z[:, :, 4:])  # untouched
    # Validation rows of the four seen classes whose logits favour the new block by +3: the fitted
    # (alpha, beta) lower the new block and the corrected CE falls below the uncorrected one.
    y = torch.arange(40).repeat(2, 1) % 4
    logits = 2 * F.one_hot(y, 6).float() + torch.randn(2, 40, 6, generator=g)
    logits[:, :, 2:4] += 3.0
    valid = torch.ones(2, 40)
    valid[1, 30:] = 0.0  # run 1 has fewer rows (padding): it takes fewer steps
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    fitted = fit_bias(logits, y, valid, block, 4, rngs, {"bias_epochs": 60, "bias_lr": 0.05}, 10)
    assert (fitted[:, 1] < -0.5).all()

    def ce(b):
        per_row = F.cross_entropy(corrected(logits, b, block)[..., :4].flatten(0, 1), y.flatten(), reduction="none")
        return (per_row.view(2, 40) * valid).sum(1) / valid.sum(1)

    assert (ce(fitted) < ce(torch.tensor([[1.0, 0.0]] * 2)) - 0.5).all()
    # Each run's fit is its own: run 1 alone gives the same bits.
    alone = fit_bias(
        logits[1:], y[1:], valid[1:], block, 4, [np.random.default_rng(1)], {"bias_epochs": 60, "bias_lr": 0.05}, 10
    )
    assert torch.equal(alone, fitted[1:])


def test_bic_loss_holds_out_validation_rows_and_evaluates_with_the_corrected_block():
    from clbench.methods.bic import BiC

    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, 6, 6, generator=g, requires_grad=True)
    old = torch.randn(1, 6, 6, generator=g)

    class Teacher:
        def forward(self, params, bn, x, train):
            return old, bn

    bias = torch.tensor([[1.5, -0.5]])  # task 1's correction, applied to the teacher's block 1
    step = hand_step(
        2,
        [4, 5, 5, 4],
        ([0, 3],),
        options=dict(BiC.options),
        logits={6: z},
        state={"teacher.w": torch.ones(1), "bias": bias},
    )
    out = BiC().loss_terms(dataclasses.replace(step, net=Teacher()))
    y = torch.tensor([4, 5, 5, 4, 0, 3])
    ce = F.cross_entropy(z[0], y)  # seen classes = all 6 at t = 2
    fixed = old.clone()
    fixed[..., 2:4] = fixed[..., 2:4] * 1.5 - 0.5
    kd = -(torch.softmax(fixed[0, :, :4] / 2, -1) * torch.log_softmax(z[0, :, :4] / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(out.terms["ce"], (2 / 3 * ce).view(1))  # lambda = 1 / (t + 1)
    torch.testing.assert_close(out.terms["kd"], (1 / 3 * 4 * kd).view(1))  # x T^2
    # Held-out rows: drawn at task 0's end from task 1's rows, round(0.1 x held) per run, and left
    # out of task 1's training rows.
    data = load_benchmark("synthetic", synthetic=SYN)
    net, params = mlp_group(data, 2)
    method = BiC()
    ctx0 = context(method, data, net, params, {}, None, 0, (30, 30), options=dict(BiC.options))
    memory = Memory(
        data.train_x[:31].expand(2, *data.train_x[:31].shape).clone(),
        data.train_y[:31].expand(2, 31).clone(),
        data.class_task[data.train_y[:31]].expand(2, 31).clone(),
        None,
        np.array([30, 30]),
    )
    ctx0 = dataclasses.replace(ctx0, state=method.init_state(ctx0), memory=memory)
    with pytest.raises(ValueError, match=r"bic: val_split must be in \[0, 1\)"):
        method.init_state(dataclasses.replace(ctx0, options={**BiC.options, "val_split": 1.0}))
    end0 = method.end_task(ctx0)
    held_out = end0.state["val_rows"]
    assert held_out.shape == (2, 3) and not torch.equal(held_out[0], held_out[1])
    assert (data.class_task[data.train_y[held_out]] == 1).all()
    ctx1 = dataclasses.replace(ctx0, task=1, state=end0.state)
    pool = method.task_rows(ctx1, data.train_task_idx[1])
    assert pool.shape == (2, len(data.train_task_idx[1]) - 3)
    assert not torch.isin(pool[0], held_out[0]).any() and not torch.isin(pool[1], held_out[1]).any()
    # Task 1's end fits the bias layer; evaluation corrects task 1's block, the old classes' logits untouched.
    memory.y[:, :30] = 0
    ctx1 = dataclasses.replace(ctx1, options={**BiC.options, "bias_epochs": 3})
    state = method.end_task(ctx1).state
    assert torch.equal(state["val_rows"], held_out)  # task 1's rows stay held out while the stage runs
    for i in range(method.end_passes(ctx1.options)):  # the trainer's end-of-task passes
        state = method.end_pass(dataclasses.replace(ctx1, state=state), i)
    assert not any(k.startswith("stage.") for k in state) and state["val_rows"].shape == (2, 3)
    assert not torch.isin(state["val_rows"], held_out).any()  # now task 2's
    assert not torch.equal(state["bias"], torch.tensor([[1.0, 0.0]] * 2))
    scores = method.classifier(dataclasses.replace(ctx1, state=state))
    x = prepare_inputs(data.test_x[:8], data.spec).unsqueeze(0).expand(2, -1, -1, -1, -1)
    plain, _ = net.forward(params, {}, x, train=False)
    s = scores(x)
    assert torch.equal(s[..., :2], plain[..., :2]) and torch.equal(s[..., 4:], plain[..., 4:])
    b = state["bias"]
    torch.testing.assert_close(s[..., 2:4], plain[..., 2:4] * b[:, :1, None] + b[:, 1:, None])
    assert method.classifier(ctx0) is None  # task 0: no correction


def _pool(step):
    from clbench.lockstep.step import concat

    return concat(step.stream, step.replay[0])


@pytest.mark.parametrize(
    "method,base,options",
    [  # the authors' defaults, but the knob chosen on seq-fmnist's validation split (test_presets_provenance.py)
        ("ss_il", "er", {"distill": 0.0}),
        ("lode", "er", {"rho": 0.5}),
        ("lode_derpp", "derpp", {"rho": 0.5}),
        ("er_las", "er", {"tau": 1.0, "window": 1}),
        ("er_aml", "er", {"temperature": 0.1}),
        ("wa", "er", {}),
        (
            "bic",
            "er",
            {"bias_epochs": 250, "bias_lr": 1e-3, "temperature": 4.0, "val_split": 0.1, "distill_after_bias": 1},
        ),
    ],
)
def test_rival_presets_are_the_protocol_values_of_their_base_method(method, base, options):
    from clbench import RunConfig

    for buffer in (50, 200, 500):
        ours = RunConfig(method=method, benchmark="seq-fmnist", buffer_size=buffer).resolve()
        theirs = RunConfig(method=base, benchmark="seq-fmnist", buffer_size=buffer).resolve()
        assert (ours.lr, ours.minibatch_size, ours.alpha, ours.beta, ours.epochs, ours.batch_size) == (
            theirs.lr,
            theirs.minibatch_size,
            theirs.alpha,
            theirs.beta,
            theirs.epochs,
            theirs.batch_size,
        )
        assert dict(ours.options) == options
        assert f"no {method} preset for seq-mnist: using the {base} row" in ours.notes


@pytest.mark.parametrize("method", ["xder", "agem", "der", "gdumb"])
def test_mask_on_both_is_refused_where_the_mask_cannot_act_on_both(method, tmp_path, capsys):
    """X-DER's replay cross-entropy and A-GEM's reference gradient are never masked (their cards say
    stream only): --mask-on both would mask them. Refused in one line, exit 2, nothing written, as
    every placement naming rows the method's masked cross-entropy does not see."""
    from clbench import cli

    db = tmp_path / "r.db"
    args = ["run", "--method", method, "--mask", "-inf", "--mask-on", "both", "--dataset", "synthetic"]
    assert cli.main([*args, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    acts = "buffer" if method == "gdumb" else "stream"
    assert err == [
        f"error: a mask on both stream and buffer rows cannot act in {method}, whose masked cross-entropy sees "
        f"only {acts} rows: valid placements for {method} are {acts}"
    ]
    assert not db.exists()
    assert synthetic_config("er", mask=-math.inf, on="both").resolve().mask.on == "both"  # ER masks both
