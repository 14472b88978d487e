"""Confidence histograms: computed in ``evaluate`` from the softmax it already takes, per run and task.

Checked against a plain per-run computation (numpy softmax, ``np.histogram``), and against the
mean confidence every run already records.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from conftest import synthetic_config

from clbench import SyntheticOptions, load_benchmark, train_runs
from clbench.engine.evaluation import evaluate
from clbench.engine.group import make_backbone
from clbench.runs.results import HISTOGRAM_BINS, HISTOGRAM_EDGES


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_evaluate_histograms_match_a_per_run_computation():
    syn = SyntheticOptions(train_per_class=4, test_per_class=30)
    data = load_benchmark("synthetic", synthetic=syn)
    cfg = synthetic_config("er", buffer=20, synthetic=syn).resolve()  # at most the 40 samples of the stream
    net = make_backbone(cfg, data)
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    params, buffers = net.init(gens)
    params = {k: (v.detach() * 4.0) for k, v in params.items()}  # sharper softmaxes: every bin gets used
    ev = evaluate(
        net, params, buffers, data, n_runs=3, after_task=data.n_tasks - 1, chunk_size=37
    )  # chunks cut across tasks' samples
    assert set(ev.histograms) == {"true_class", "max"}
    assert HISTOGRAM_BINS == 20 and len(HISTOGRAM_EDGES) == 21
    x_all, y_all = data.test_x, data.test_y
    from clbench.data.loading import prepare_inputs

    for r in range(3):
        one = {k: v[r : r + 1] for k, v in params.items()}
        for t, idx in enumerate(data.test_task_idx):
            x = prepare_inputs(x_all[idx], data.spec).unsqueeze(0)
            logits, _ = net.forward(one, buffers, x.contiguous(), train=False)
            p = _softmax64(logits[0].numpy())
            y = y_all[idx].numpy()
            for kind, values in (("true_class", p[np.arange(len(y)), y]), ("max", p.max(-1))):
                expected, _ = np.histogram(values, bins=HISTOGRAM_EDGES)
                got = ev.histograms[kind][r, t]
                assert got.sum() == len(idx)
                # float32 against float64: only a sample within rounding of an edge may move a bin
                near_edge = int((np.abs(values[:, None] - HISTOGRAM_EDGES[None, 1:-1]) < 1e-5).sum())
                assert np.abs(np.cumsum(got) - np.cumsum(expected)).max() <= near_edge
    used = (ev.histograms["true_class"].sum((0, 1)) > 0).sum()
    assert used >= 10  # the test exercises most bins, not one


def test_run_histograms_are_whole_and_agree_with_the_mean_confidence():
    (res,) = train_runs([synthetic_config("er", seed=1, mask=-math.inf)])
    t, k = res.class_il.shape[0], res.confidence.shape[1]
    for kind in ("true_class", "max"):
        h = res.histograms[kind]
        assert h.shape == (t, t, HISTOGRAM_BINS) and h.dtype == np.int64
        np.testing.assert_array_equal(h.sum(-1), np.broadcast_to(res.test_counts, (t, t)))
    # the largest of K probabilities is at least 1/K: nothing in the bins below it
    first = int(np.searchsorted(HISTOGRAM_EDGES, 1 / k, side="right")) - 1  # the bin holding 1/K
    assert res.histograms["max"][..., :first].sum() == 0
    # the mean p(true class) of a task's samples (from the recorded mean confidence, equal class
    # counts) lies between the histogram's lower and upper bin edges
    lo, hi = HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:]
    classes = np.arange(k).reshape(t, -1)
    for i in range(t):
        for j in range(t):
            h = res.histograms["true_class"][i, j]
            mean = np.diagonal(res.confidence[i])[classes[j]].mean()
            assert (h * lo).sum() / h.sum() - 1e-9 <= mean <= (h * hi).sum() / h.sum() + 1e-9


def test_results_without_histograms_still_load():
    (res,) = train_runs([synthetic_config("sgd", seed=0)])
    d = res.to_dict()
    d.pop("histograms")
    from clbench import RunResult

    assert RunResult.from_dict(d).histograms == {}
