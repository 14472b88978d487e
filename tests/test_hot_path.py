"""The training hot path's fast paths compute what the plain formulation computes."""

import numpy as np
import pytest
import torch
from conftest import synthetic_config

from clbench.data.loading import prepare_inputs
from clbench.data.specs import get_benchmark
from clbench.engine.loop import train_group
from clbench.engine.progress import PhaseTimes
from clbench.lockstep.backbones import _ONEDNN, ONEDNN_MIN_MACS, BatchedMLP, batched_linear
from clbench.sweep.driver import train_runs


def reference_linear(x, w, b):
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # w (R, out, in), nn.Linear's layout


@pytest.mark.parametrize("m", [7, 300])  # below and above the oneDNN threshold (784 x 100 layer)
def test_batched_linear_matches_baddbmm_forward_and_backward(m):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, m, 784, generator=g).requires_grad_(True)
    w = (torch.randn(3, 100, 784, generator=g) * 0.05).requires_grad_(True)
    b = torch.randn(3, 100, generator=g).requires_grad_(True)
    gy = torch.randn(3, m, 100, generator=g)
    out = batched_linear(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b), gy)
    ref = reference_linear(x, w, b)
    ref_grads = torch.autograd.grad(ref, (x, w, b), gy)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not _ONEDNN, reason="oneDNN is not available in this torch build")
def test_onednn_path_gives_each_run_the_same_bits_in_any_group():
    m = ONEDNN_MIN_MACS // (784 * 100) + 1
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, m, 784, generator=g)
    w = (torch.randn(4, 100, 784, generator=g) * 0.05).requires_grad_(True)
    b = torch.zeros(4, 100).requires_grad_(True)
    gy = torch.randn(4, m, 100, generator=g)
    out = batched_linear(x, w, b)
    gw, gb = torch.autograd.grad(out, (w, b), gy)
    for r in range(4):
        w1 = w[r : r + 1].detach().clone().requires_grad_(True)
        b1 = b[r : r + 1].detach().clone().requires_grad_(True)
        out1 = batched_linear(x[r : r + 1].clone(), w1, b1)
        gw1, gb1 = torch.autograd.grad(out1, (w1, b1), gy[r : r + 1])
        assert torch.equal(out1[0], out[r]) and torch.equal(gw1[0], gw[r]) and torch.equal(gb1[0], gb[r])


def test_mlp_shared_inputs_equal_materialised_inputs():
    net = BatchedMLP(784, 10)
    params, _ = net.init([torch.Generator().manual_seed(s) for s in range(3)])
    x = torch.rand(1, 600, 784).expand(3, 600, 784)  # evaluation: one input set, stride 0 on runs
    with torch.no_grad():
        shared, _ = net.forward(params, {}, x, train=False)
        full, _ = net.forward(params, {}, x.contiguous(), train=False)
    torch.testing.assert_close(shared, full, rtol=1e-6, atol=1e-6)


def test_prepare_inputs_scales_like_float_division():
    x = torch.randint(0, 256, (2, 5, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(prepare_inputs(x, get_benchmark("seq-fmnist")), x.to(torch.float32) / 255.0)
    spec = get_benchmark("seq-cifar10")
    x3 = torch.randint(0, 256, (2, 5, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    assert torch.equal(prepare_inputs(x3, spec), (x3.to(torch.float32) / 255.0 - mean) / std)


@pytest.mark.parametrize("method", ["derpp", "er"])
def test_joint_forward_of_the_step_batches_matches_separate_forwards(method, monkeypatch):
    # The MLP forwards DER++'s stream and two replay draws as one batch; forcing the per-batch
    # path must give the same run (the two differ only in float rounding).
    cfgs = [synthetic_config(method, seed=s, buffer=b) for s, b in ((0, 50), (1, 5))]
    joint = train_runs(cfgs)
    monkeypatch.setattr(BatchedMLP, "row_independent", False)
    separate = train_runs(cfgs)
    for a, b in zip(joint, separate):
        np.testing.assert_array_equal(a.class_il_correct, b.class_il_correct)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5, atol=1e-6)


def test_phase_times_profile_without_changing_results():
    cfgs = [synthetic_config("derpp", seed=s).resolve() for s in range(2)]
    from clbench import load_benchmark

    data = load_benchmark("synthetic", synthetic=cfgs[0].synthetic)
    phases = PhaseTimes()
    profiled = train_group(cfgs, data, phases=phases)
    plain = train_group(cfgs, data)
    for a, b in zip(profiled, plain):
        np.testing.assert_array_equal(a.confidence, b.confidence)
    assert {"forward and loss", "backward", "optimizer", "buffer insertion", "evaluation"} <= set(phases.seconds)
    assert all(s >= 0 for s in phases.seconds.values())
