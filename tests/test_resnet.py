"""BatchedResNet18 against a plain ``torch.nn`` reduced ResNet-18, run by run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from clbench.lockstep.resnet import BatchedResNet18

NF = 4
K = 5
C_IN = 3
N = 6
HW = 16


# ---------------------------------------------------------------- reference (one run, torch.nn)


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(c_in, c_out, 3, stride)
        self.conv2 = ConvBN(c_out, c_out, 3, 1)
        self.shortcut = ConvBN(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class RefResNet18(nn.Module):
    """Mammoth's reduced ResNet-18, with attribute names matching BatchedResNet18's keys."""

    def __init__(self, n_classes: int, in_channels: int, nf: int):
        super().__init__()
        self.stem = ConvBN(in_channels, nf, 3, 1)
        c_in = nf
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            blocks = [BasicBlock(c_in, nf * mult, stride), BasicBlock(nf * mult, nf * mult, 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            c_in = nf * mult
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for stage in range(1, 5):
            h = getattr(self, f"layer{stage}")(h)
        return self.fc(h.mean(dim=(2, 3)))


def reference(params: dict, buffers: dict, r: int) -> RefResNet18:
    """A torch.nn module holding run r's parameters and running statistics."""
    ref = RefResNet18(K, C_IN, NF)
    state = {k: v[r].detach().clone() for k, v in {**params, **buffers}.items()}
    state["fc.weight"] = state["fc.weight"].t().contiguous()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return ref


def ref_grad(ref: RefResNet18, key: str) -> torch.Tensor:
    g = dict(ref.named_parameters())[key].grad
    return g.t() if key == "fc.weight" else g


def make(R: int, seed0: int = 0, nf: int = NF) -> tuple[BatchedResNet18, dict, dict]:
    model = BatchedResNet18(K, in_channels=C_IN, width=nf)
    params, buffers = model.init([torch.Generator().manual_seed(seed0 + r) for r in range(R)])
    return model, params, buffers


def perturb(params: dict, buffers: dict, seed: int = 1) -> tuple[dict, dict]:
    """Non-trivial BN affine parameters and running statistics, so the tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone() for k, v in params.items()}
    for k in params:
        if ".bn." in k:
            params[k] += 0.3 * torch.randn(params[k].shape, generator=g)
        params[k].requires_grad_(True)
    buffers = {k: v.clone() for k, v in buffers.items()}
    for k in buffers:
        noise = 0.2 * torch.randn(buffers[k].shape, generator=g)
        buffers[k] = buffers[k] + (noise if k.endswith("mean") else noise.abs())
    return params, buffers


def rand_x(R: int, n: int = N, hw: int = HW, seed: int = 2) -> torch.Tensor:
    return torch.randn(R, n, C_IN, hw, hw, generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    return torch.allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- 1. forward equals torch.nn


@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_reference(train: bool) -> None:
    R = 3
    model, params, buffers = make(R)
    params, buffers = perturb(params, buffers)
    x = rand_x(R)
    snapshot = (
        {k: v.detach().clone() for k, v in params.items()},
        {k: v.clone() for k, v in buffers.items()},
        x.clone(),
    )

    logits, new_buffers = model.forward(params, buffers, x, train=train)
    assert logits.shape == (R, N, K)
    assert set(new_buffers) == set(buffers)

    # Pure function: nothing passed in was modified.
    assert all(torch.equal(params[k], snapshot[0][k]) for k in params)
    assert all(torch.equal(buffers[k], snapshot[1][k]) for k in buffers)
    assert torch.equal(x, snapshot[2])
    if not train:
        assert all(new_buffers[k] is buffers[k] for k in buffers)

    for r in range(R):
        ref = reference(params, buffers, r).train(train)
        with torch.no_grad():
            expected = ref(x[r])
        assert close(logits[r], expected), (r, (logits[r] - expected).abs().max())
        ref_buffers = dict(ref.named_buffers())
        for k in buffers:
            assert close(new_buffers[k][r], ref_buffers[k]), (r, k)
            if train:  # the statistics really moved
                assert not torch.equal(new_buffers[k][r], buffers[k][r])


# ---------------------------------------------------------------- 2. gradients, no cross-talk


def test_gradients_match_reference() -> None:
    R = 3
    model, params, buffers = make(R)
    params, buffers = perturb(params, buffers)
    x = rand_x(R)
    coef = torch.randn(R, N, K, generator=torch.Generator().manual_seed(3))

    logits, _ = model.forward(params, buffers, x, train=True)
    (logits * coef).sum().backward()

    for r in range(R):
        ref = reference(params, buffers, r).train(True)
        (ref(x[r]) * coef[r]).sum().backward()
        for k, p in params.items():
            g, g_ref = p.grad[r], ref_grad(ref, k)
            err = (g - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-12)
            assert err < 1e-4, (r, k, float(err))


@pytest.mark.parametrize("train", [True, False])
def test_no_cross_talk(train: bool) -> None:
    R = 3
    model, params, buffers = make(R)
    params, buffers = perturb(params, buffers)
    x = rand_x(R)
    coef = torch.randn(R, N, K, generator=torch.Generator().manual_seed(3))

    def run(params: dict, x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        logits, new_buffers = model.forward(params, buffers, x, train=train)
        (logits * coef).sum().backward()
        return logits.detach(), {k: v.grad for k, v in params.items()}, new_buffers

    logits, grads, new_buffers = run(params, x)

    # Other runs' inputs changed.
    x2 = x.clone()
    x2[1] = 10 * torch.randn(x2[1].shape, generator=torch.Generator().manual_seed(4))
    logits2, grads2, new_buffers2 = run(params, x2)
    # Other runs' parameters changed.
    params3 = {k: v.detach().clone() for k, v in params.items()}
    for k in params3:
        params3[k][1:] += 0.5
    logits3, grads3, new_buffers3 = run(params3, x)

    for lo, gr, nb in ((logits2, grads2, new_buffers2), (logits3, grads3, new_buffers3)):
        assert not torch.allclose(lo[1], logits[1])  # the perturbation did something
        assert close(lo[0], logits[0], rtol=0, atol=1e-6)
        for k in grads:
            assert close(gr[k][0], grads[k][0], rtol=0, atol=1e-6), k
        for k in nb:
            assert close(nb[k][0], new_buffers[k][0], rtol=0, atol=1e-6), k


# ---------------------------------------------------------------- 3. row_weight


def test_row_weight_matches_run_alone_on_valid_rows() -> None:
    R = 2
    model, params, buffers = make(R)
    params, buffers = perturb(params, buffers)
    x = rand_x(R)
    valid = torch.tensor([0, 2, 3, 5])
    row_weight = torch.ones(R, N)
    row_weight[1] = 0.0
    row_weight[1, valid] = 1.0
    pad = torch.ones(N, dtype=torch.bool)
    pad[valid] = False
    x[1, pad] = 100.0  # garbage in padding rows must not leak into statistics
    coef = torch.randn(R, N, K, generator=torch.Generator().manual_seed(3))

    logits, new_buffers = model.forward(params, buffers, x, train=True, row_weight=row_weight)
    assert torch.isfinite(logits).all()
    (logits * coef * row_weight.unsqueeze(-1)).sum().backward()

    for r, rows in ((0, torch.arange(N)), (1, valid)):
        alone = {k: v[r : r + 1].detach().clone().requires_grad_(True) for k, v in params.items()}
        alone_buffers = {k: v[r : r + 1] for k, v in buffers.items()}
        exp_logits, exp_buffers = model.forward(alone, alone_buffers, x[r : r + 1, rows], train=True)
        (exp_logits * coef[r : r + 1, rows]).sum().backward()
        assert close(logits[r, rows], exp_logits[0]), (r, (logits[r, rows] - exp_logits[0]).abs().max())
        for k in buffers:
            assert close(new_buffers[k][r], exp_buffers[k][0]), (r, k)
        for k, p in params.items():
            g, g_ref = p.grad[r], alone[k].grad[0]
            err = (g - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-12)
            assert err < 1e-4, (r, k, float(err))

    # In eval mode row_weight is irrelevant: running statistics are used.
    ev, ev_buffers = model.forward(params, buffers, x, train=False, row_weight=row_weight)
    ev_ref, _ = model.forward(params, buffers, x, train=False)
    assert torch.equal(ev, ev_ref) and ev_buffers is buffers


def test_row_weight_run_without_valid_rows_keeps_statistics() -> None:
    model, params, buffers = make(2)
    row_weight = torch.ones(2, N)
    row_weight[1] = 0.0
    logits, new_buffers = model.forward(params, buffers, rand_x(2), train=True, row_weight=row_weight)
    assert torch.isfinite(logits).all()
    for k in buffers:
        assert torch.equal(new_buffers[k][1], buffers[k][1])
        assert not torch.equal(new_buffers[k][0], buffers[k][0])


# ---------------------------------------------------------------- 4. init, shapes, shared input


def test_init_independent_of_group() -> None:
    _, p1, b1 = make(1, seed0=7)
    _, p3, b3 = make(3, seed0=7)
    _, p3b, _ = make(3, seed0=5)  # run 2 of this group is seed 7
    for k in p1:
        assert p3[k].shape[0] == 3 and p3[k].requires_grad and p3[k].is_leaf
        assert torch.equal(p1[k][0], p3[k][0]), k
        assert torch.equal(p1[k][0], p3b[k][2]), k
        assert not torch.equal(p3[k][0], p3[k][1]) or ".bn." in k
    for k in b1:
        assert torch.equal(b1[k][0], b3[k][0])


def test_init_matches_pytorch_defaults() -> None:
    model, params, buffers = make(2)
    ref = RefResNet18(K, C_IN, NF)
    ref_params = dict(ref.named_parameters())
    assert set(params) == set(ref_params)
    assert set(buffers) == {k for k, _ in ref.named_buffers() if not k.endswith("num_batches_tracked")}
    for k, p in params.items():
        expected_shape = ref_params[k].t().shape if k == "fc.weight" else ref_params[k].shape
        assert p.shape[1:] == expected_shape, k
        if ".bn." in k:
            assert torch.equal(p, torch.full_like(p, 1.0 if k.endswith("weight") else 0.0))
        else:
            fan_in = ref_params["fc.weight"].shape[1] if k.startswith("fc.") else ref_params[k][0].numel()
            bound = 1 / math.sqrt(fan_in)
            assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound, k
    for k, b in buffers.items():
        assert torch.equal(b, torch.full_like(b, 0.0 if k.endswith("mean") else 1.0))
    # Same stream as nn.Conv2d's own initialisation: the stem conv is the first draw.
    torch.manual_seed(0)
    conv = nn.Conv2d(C_IN, NF, 3, padding=1, bias=False)
    assert torch.allclose(params["stem.conv.weight"][0], conv.weight, rtol=0, atol=1e-7)
    # Mammoth-sized default network: about 11.2M parameters per run.
    full = BatchedResNet18(10)
    n_params = sum(math.prod(v.shape[1:]) for v in full.init([torch.Generator().manual_seed(0)])[0].values())
    assert 11_100_000 < n_params < 11_200_000


@pytest.mark.parametrize("hw", [32, 64])
def test_larger_inputs(hw: int) -> None:
    model, params, buffers = make(2)
    x = rand_x(2, n=3, hw=hw)
    for train in (True, False):
        logits, _ = model.forward(params, buffers, x, train=train)
        assert logits.shape == (2, 3, K) and torch.isfinite(logits).all()
    ref = reference(params, buffers, 1).eval()
    with torch.no_grad():
        assert close(logits[1], ref(x[1]))


@pytest.mark.parametrize("train", [True, False])
def test_shared_input_equals_materialised(train: bool) -> None:
    R = 3
    model, params, buffers = make(R)
    params, buffers = perturb(params, buffers)
    base = rand_x(1)[0]
    shared = base.expand(R, *base.shape)
    assert shared.stride(0) == 0
    logits_s, buffers_s = model.forward(params, buffers, shared, train=train)
    logits_m, buffers_m = model.forward(params, buffers, shared.contiguous(), train=train)
    assert close(logits_s, logits_m, atol=1e-6)
    for k in buffers:
        assert close(buffers_s[k], buffers_m[k], atol=1e-6)
