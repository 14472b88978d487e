"""Metrics as functions of an accuracy matrix (protocol.md section 4), checked by hand."""

import math

import numpy as np
import pytest

from clbench import metrics

A = np.array(
    [
        [90.0, 10.0, 5.0],
        [60.0, 80.0, 7.0],
        [70.0, 50.0, 95.0],
    ]
)


def test_final_average_accuracy():
    assert metrics.final_average_accuracy(A) == pytest.approx((70 + 50 + 95) / 3)


def test_forgetting_chaudhry_excludes_the_last_row_from_the_max():
    # task 0: max(90, 60) - 70 = 20; task 1: max(80) - 50 = 30
    assert metrics.forgetting(A) == pytest.approx(25.0)
    # A task that improves at the end gives negative forgetting under Chaudhry's definition...
    b = np.array([[50.0, 0.0], [80.0, 90.0]])
    assert metrics.forgetting(b, "chaudhry") == pytest.approx(-30.0)
    # ...and zero under Mammoth's, whose max includes the last row.
    assert metrics.forgetting(b, "mammoth") == pytest.approx(0.0)
    assert metrics.forgetting(A, "mammoth") == pytest.approx(25.0)


def test_backward_transfer():
    assert metrics.backward_transfer(A) == pytest.approx(((70 - 90) + (50 - 80)) / 2)


def test_single_task_and_bad_input():
    assert math.isnan(metrics.forgetting([[50.0]]))
    assert metrics.final_average_accuracy([[50.0]]) == 50.0
    with pytest.raises(ValueError, match="T x T"):
        metrics.final_average_accuracy(np.ones((2, 3)))
    with pytest.raises(ValueError, match="chaudhry, mammoth"):
        metrics.forgetting(A, "avalanche")


def test_curves_and_task_wise_accuracy():
    np.testing.assert_allclose(metrics.average_accuracy_curve(A), [90, 70, (70 + 50 + 95) / 3])
    per_class = np.array([[100, 80, 0, 20], [50, 50, 60, 80]])
    np.testing.assert_allclose(metrics.task_wise_average_accuracy(per_class, 2), [[90, 10], [50, 70]])


def test_summarize_names_both_settings():
    s = metrics.summarize(A, A)
    assert s["faa_class_il"] == s["faa_task_il"]
    assert {"forgetting_class_il", "forgetting_mammoth_task_il", "bwt_class_il"} <= s.keys()
