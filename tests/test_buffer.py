"""The reservoir buffer and its random plans."""

import numpy as np
import pytest
import torch

from clbench import RunConfig
from clbench.data.augment import crop_flip, draw_crop_flip
from clbench.lockstep.buffer import ReservoirBuffer, reservoir_slots, sample_without_replacement


def sequential_reservoir(n_seen, items, size, j):
    """Mammoth's reservoir, one sample at a time, with the same random draws j."""
    buf = {}
    for k, item in enumerate(items):
        n = n_seen + k
        if n < size:
            buf[n] = item
        elif j[k] < size:
            buf[int(j[k])] = item
    return buf


@pytest.mark.parametrize("size,n_seen", [(7, 0), (7, 30), (50, 0), (3, 100)])
def test_planned_slots_equal_sequential_insertion(size, n_seen):
    n_new, batch = 40, 10
    slots = reservoir_slots(np.random.default_rng(1), n_seen, n_new, size, batch)
    j = np.random.default_rng(1).integers(0, n_seen + np.arange(n_new) + 1)
    initial = {s: ("old", s) for s in range(min(n_seen, size))}
    want = {**initial, **sequential_reservoir(n_seen, list(range(n_new)), size, j)}
    got = dict(initial)
    for k, s in enumerate(slots):
        if s >= 0:
            assert (s not in got) or got[s] != k  # at most one write per slot per step survives
            got[int(s)] = k
    assert got == want
    # Within a step, no slot is written twice (the planned writes are order-free).
    for step in slots.reshape(-1, batch):
        live = step[step >= 0]
        assert len(live) == len(set(live.tolist()))


def test_reservoir_keeps_each_sample_with_equal_probability():
    size, n = 10, 100
    counts = np.zeros(n)
    for seed in range(2000):
        slots = reservoir_slots(np.random.default_rng(seed), 0, n, size, 10)
        final = {}
        for k, s in enumerate(slots):
            if s >= 0:
                final[int(s)] = k
        counts[list(final.values())] += 1
    p = counts / 2000
    assert abs(p.mean() - size / n) < 1e-9  # exactly `size` kept each time
    assert p.min() > 0.06 and p.max() < 0.14  # each ~0.1


@pytest.mark.parametrize("m,avail", [(10, 200), (10, 5120), (128, 200), (10, 7), (10, 0), (4, 4)])
def test_sample_without_replacement(m, avail):
    rng = np.random.default_rng(0)
    out = sample_without_replacement(rng, np.full(300, avail), m)
    k = min(m, avail)
    assert out.shape == (300, m)
    assert (out[:, k:] == -1).all()
    live = out[:, :k]
    assert ((live >= 0) & (live < max(avail, 1))).all()
    for row in live:
        assert len(set(row.tolist())) == k
    if m < avail <= 200:  # roughly uniform over the buffer
        freq = np.bincount(live.ravel(), minlength=avail) / live.size
        assert freq.max() < 5 / avail


def test_buffer_insert_and_draw_keep_runs_apart():
    buf = ReservoirBuffer([3, 5], (1, 2, 2), 4, store_logits=True)
    x = torch.arange(2 * 2 * 4, dtype=torch.uint8).view(2, 2, 1, 2, 2)
    y = torch.tensor([[1, 2], [3, 0]])
    logits = torch.randn(2, 2, 4)
    buf.insert(torch.tensor([[0, -1], [4, 1]]), x, y, y // 2, logits)
    d = buf.draw(torch.tensor([[0, -1], [4, 1]]))
    assert torch.equal(d.x[0, 0], x[0, 0]) and torch.equal(d.x[1], x[1])
    assert d.y.tolist() == [[1, 1], [3, 0]]  # padding row reads slot 0 but is marked invalid
    assert d.valid.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    torch.testing.assert_close(d.logits[1], logits[1])
    assert buf.n_seen == 2
    assert buf.available().tolist() == [2, 2]
    with pytest.raises(ValueError, match="logits"):
        buf.insert(torch.tensor([[0, 1], [0, 1]]), x, y, y, None)


def test_crop_flip_matches_per_sample_reference():
    rng = np.random.default_rng(0)
    x = torch.rand(2, 3, 3, 6, 5)
    params = torch.from_numpy(draw_crop_flip(rng, (2, 3), pad=2))
    got = crop_flip(x, params, pad=2)
    for r in range(2):
        for n in range(3):
            dy, dx, flip = params[r, n].tolist()
            padded = torch.nn.functional.pad(x[r, n], (2, 2, 2, 2))
            want = padded[:, dy : dy + 6, dx : dx + 5]
            if flip:
                want = want.flip(-1)
            torch.testing.assert_close(got[r, n], want)


def test_replay_never_draws_a_slot_before_it_is_written(monkeypatch):
    """A task of 300 steps crosses the replay plan's chunk of 256 steps while a buffer of 5120 is
    still filling: every replayed slot must hold a sample written at an earlier step (the plan
    once counted the samples seen twice from the second chunk on and drew blank slots)."""
    from clbench.data.loading import load_benchmark
    from clbench.data.specs import SyntheticOptions
    from clbench.engine import group_state, plans
    from clbench.engine.loop import train_group

    assert plans.PLAN_CHUNK_STEPS < 300
    written: list[set[int]] = []
    bad: list[tuple[int, int]] = []

    class RecordingBuffer(ReservoirBuffer):
        def insert(self, slots, x, y, task, logits):
            for r, row in enumerate(slots.tolist()):
                written[r].update(s for s in row if s >= 0)
            super().insert(slots, x, y, task, logits)

        def draw(self, idx):
            for r, row in enumerate(idx.tolist()):
                bad.extend((r, s) for s in row if s >= 0 and s not in written[r])
            return super().draw(idx)

    monkeypatch.setattr(group_state, "ReservoirBuffer", RecordingBuffer)
    syn = SyntheticOptions(n_tasks=2, train_per_class=1500, test_per_class=5)
    cfgs = [RunConfig(method="er", benchmark="synthetic", seed=0, buffer_size=5120, synthetic=syn).resolve()]
    written.append(set())
    train_group(cfgs, load_benchmark("synthetic", synthetic=syn))
    assert written[0] and not bad, f"{len(bad)} replayed rows came from never-written slots, e.g. {bad[:3]}"
