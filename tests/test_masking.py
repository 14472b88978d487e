"""Section 1: the general masked softmax."""

import math

import pytest
import torch
import torch.nn.functional as F

from clbench import MaskSpec, masked_cross_entropy
from clbench.masking import task_active_mask
from clbench.runs.mask import parse_mask_value


def grad_of(logits, targets, active, m, reduction="sum"):
    z = logits.clone().requires_grad_(True)
    loss = masked_cross_entropy(z, targets, active, m, reduction=reduction)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g


def test_gradient_matches_hand_computed_values():
    # z = [1, 2, 3, 4], classes 0 and 1 active, m = 0, target 1.
    # z~ = [1, 2, 0, 0]; denominator e + e^2 + 2 (the two masked classes contribute e^0 each).
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    active = torch.tensor([[True, True, False, False]])
    loss, g = grad_of(z, torch.tensor([1]), active, 0.0)
    denom = math.exp(1) + math.exp(2) + 2 * math.exp(0)
    assert loss.item() == pytest.approx(-2 + math.log(denom), abs=1e-6)
    expected = [math.exp(1) / denom, math.exp(2) / denom - 1, 0.0, 0.0]
    assert g[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert g[0, 2].item() == 0.0 and g[0, 3].item() == 0.0  # exactly zero, not small


@pytest.mark.parametrize("m", [-math.inf, -50.0, -3.0, 0.0, 2.5, 50.0])
def test_masked_gradients_exactly_zero_and_active_equal_softmax_minus_onehot(m):
    torch.manual_seed(0)
    z = torch.randn(6, 10) * 3
    y = torch.tensor([0, 3, 5, 7, 9, 1])
    task = y // 2
    active = task_active_mask(task, torch.arange(10) // 2)
    loss, g = grad_of(z, y, active, m)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert (g[~active] == 0).all()
    z_masked = torch.where(active, z, torch.tensor(m))
    expected = torch.softmax(z_masked, -1) - F.one_hot(y, 10)
    torch.testing.assert_close(g[active], expected[active], atol=1e-6, rtol=1e-5)


def test_minus_inf_equals_plain_cross_entropy_over_the_active_slice():
    torch.manual_seed(1)
    z = torch.randn(8, 10)
    y = torch.randint(4, 6, (8,))  # task 2: classes 4, 5
    active = torch.zeros(8, 10, dtype=torch.bool)
    active[:, 4:6] = True
    got = masked_cross_entropy(z, y, active, -math.inf)
    want = F.cross_entropy(z[:, 4:6], y - 4)
    torch.testing.assert_close(got, want)


def test_very_negative_finite_mask_converges_to_minus_inf():
    torch.manual_seed(2)
    z = torch.randn(5, 10)
    y = torch.tensor([0, 1, 0, 1, 1])
    active = torch.zeros(5, 10, dtype=torch.bool)
    active[:, :2] = True
    limit = masked_cross_entropy(z, y, active, -math.inf).item()
    gaps = [abs(masked_cross_entropy(z, y, active, m).item() - limit) for m in (-2.0, -5.0, -10.0, -30.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 1e-2
    assert gaps[-1] < 1e-9


def test_finite_mask_scales_the_active_gradient():
    # The masked entries add (K - |A|) e^m to the denominator: the larger m, the smaller the
    # target's probability, and the stronger the gradient pulling the target logit up.
    z = torch.zeros(1, 10)
    active = torch.zeros(1, 10, dtype=torch.bool)
    active[0, :2] = True
    pulls = [grad_of(z, torch.tensor([0]), active, m)[1][0, 0].item() for m in (-math.inf, -1.0, 0.0, 1.0)]
    assert pulls[0] == pytest.approx(-0.5)
    assert pulls[2] == pytest.approx(1 / 10 - 1)  # m = 0 on zero logits: plain softmax over 10 classes
    assert all(a > b for a, b in zip(pulls, pulls[1:]))  # -0.5 > ... > -0.9 > ...


def test_rows_with_different_active_sets_in_one_batch():
    torch.manual_seed(3)
    z = torch.randn(3, 6)
    y = torch.tensor([0, 3, 5])
    active = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    per_row = masked_cross_entropy(z, y, active, -math.inf, reduction="none")
    for i, (lo, hi) in enumerate([(0, 2), (2, 4), (4, 6)]):
        want = F.cross_entropy(z[i : i + 1, lo:hi], y[i : i + 1] - lo)
        torch.testing.assert_close(per_row[i], want)


def test_per_row_mask_values():
    z = torch.randn(2, 4)
    y = torch.tensor([0, 0])
    active = torch.tensor([[True, False, False, False]] * 2)
    both = masked_cross_entropy(z, y, active, torch.tensor([-math.inf, 1.0]), reduction="none")
    assert both[0].item() == pytest.approx(0.0, abs=1e-7)  # the only active class: certain
    assert both[1].item() == pytest.approx(masked_cross_entropy(z[1:], y[1:], active[1:], 1.0).item())


@pytest.mark.parametrize("m", [-math.inf, -50.0, 50.0])
def test_no_nan_when_the_target_is_the_only_active_class(m):
    z = (torch.randn(4, 10) * 20).requires_grad_(True)
    y = torch.tensor([0, 2, 4, 9])
    active = F.one_hot(y, 10).bool()
    loss = masked_cross_entropy(z, y, active, m)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    if m == -math.inf:
        assert loss.item() == 0.0 and (z.grad == 0).all()


def test_unmasked_baseline_is_plain_cross_entropy():
    z = torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    active = torch.zeros(5, 10, dtype=torch.bool)
    torch.testing.assert_close(masked_cross_entropy(z, y, active, None), F.cross_entropy(z, y))


def test_validation_errors():
    z = torch.randn(2, 4)
    active = torch.tensor([[True, True, False, False]] * 2)
    with pytest.raises(ValueError, match="target"):
        masked_cross_entropy(z, torch.tensor([0, 3]), active, -math.inf)
    with pytest.raises(ValueError, match="NaN"):
        masked_cross_entropy(z, torch.tensor([0, 1]), active, float("nan"))
    with pytest.raises(ValueError, match=r"\+inf"):
        masked_cross_entropy(z, torch.tensor([0, 1]), active, math.inf)


def test_mask_spec_parsing():
    assert parse_mask_value("none") is None
    assert parse_mask_value("-inf") == -math.inf
    assert parse_mask_value("-5") == -5.0
    for bad in ("abc", "nan", "inf", "+inf"):
        with pytest.raises(ValueError, match="none, -inf or a finite number"):
            parse_mask_value(bad)
    spec = MaskSpec.parse("-inf", on="both")
    assert spec.on_stream and spec.on_buffer and spec.label == "-inf"
    assert MaskSpec.from_dict(spec.to_dict()) == spec
    assert not MaskSpec().on_stream
    with pytest.raises(ValueError, match="stream, buffer, both"):
        MaskSpec(-1.0, on="everywhere")
