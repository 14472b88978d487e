import math

import pytest

from clbench import MaskSpec, RunConfig, SyntheticOptions
from clbench.methods import get_method

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def synthetic_config(method="er", seed=0, buffer=50, mask=None, on="stream", **kw):
    syn = kw.pop("synthetic", SyntheticOptions(train_per_class=40, test_per_class=20))
    return RunConfig(method=method, benchmark="synthetic", seed=seed, buffer_size=buffer, mask=MaskSpec(mask, on), synthetic=syn, **kw)


@pytest.fixture
def mixed_group():
    """Configs that may share a group: different seeds, buffers (one below the minibatch), masks."""

    def make(method):
        # A mask on the buffer alone where the method's cross-entropy sees replayed rows; else both.
        buffer_only = "buffer" if "buffer" in get_method(method).mask_acts_on else "both"
        return [
            synthetic_config(method, seed=0, buffer=50, mask=None),
            synthetic_config(method, seed=1, buffer=5, mask=-math.inf),
            synthetic_config(method, seed=2, buffer=30, mask=-2.0, on="both", lr=0.05),
            synthetic_config(method, seed=3, buffer=8, mask=1.0, on=buffer_only, alpha=0.5, beta=0.3),
        ]

    return make
