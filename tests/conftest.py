import math

import pytest

from clbench import MaskSpec, RunConfig, SyntheticOptions
from clbench.methods import get_method

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def synthetic_config(method="er", seed=0, buffer=50, mask=None, on="stream", **kw):
    syn = kw.pop("synthetic", SyntheticOptions(train_per_class=40, test_per_class=20))
    return RunConfig(
        method=method,
        benchmark="synthetic",
        seed=seed,
        buffer_size=buffer,
        mask=MaskSpec(mask, on),
        synthetic=syn,
        **kw,
    )


# Few refit epochs for GDumb, few bias-stage passes for BiC in tests (their defaults: 256 and 250 per task end).
TEST_OPTIONS = {"gdumb": {"fitting_epochs": 4}, "bic": {"bias_epochs": 5}}


@pytest.fixture
def mixed_group():
    """Configs that may share a group: different seeds, buffers (one below the minibatch), masks.

    Adapted per method: where the mask can act (a method whose cross-entropy sees only replayed
    rows takes its masks on the buffer; one without a softmax cross-entropy takes none), and one
    buffer size for the methods that group by it (their other values still differ per run)."""

    def make(method, **kw):
        cls = get_method(method)
        acts = cls.mask_acts_on
        # A mask on the buffer alone where the method's cross-entropy sees replayed rows, on both
        # where it sees both (a placement must act on every row it names); else where it acts.
        plain = "stream" if "stream" in acts else "buffer"
        buffer_only = "buffer" if "buffer" in acts else plain
        both = "both" if {"stream", "buffer"} <= set(acts) else plain
        masks = (None, -math.inf, -2.0, 1.0) if acts else (None,) * 4
        buffers = (30,) * 4 if cls.group_by_buffer_size else (50, 5, 30, 8)
        if method in TEST_OPTIONS:
            kw.setdefault("options", TEST_OPTIONS[method])
        return [
            synthetic_config(method, seed=0, buffer=buffers[0], mask=masks[0], **kw),
            synthetic_config(method, seed=1, buffer=buffers[1], mask=masks[1], on=plain, **kw),
            synthetic_config(method, seed=2, buffer=buffers[2], mask=masks[2], on=both, lr=0.05, **kw),
            synthetic_config(
                method, seed=3, buffer=buffers[3], mask=masks[3], on=buffer_only, alpha=0.5, beta=0.3, **kw
            ),
        ]

    return make
