"""The docstrings' examples run as tests: the metrics' (as torchmetrics' own classes carry one) and the record's
path."""

import doctest

import pytest

import polypool.callbacks.run_record
import polypool.metrics


@pytest.mark.parametrize("module", [polypool.metrics, polypool.callbacks.run_record], ids=lambda m: m.__name__)
def test_the_examples_in_the_docstrings_hold(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no example"
    assert result.failed == 0, f"{result.failed} of {module.__name__}'s examples failed (doctest's report above)"


def test_the_metrics_say_what_torchmetrics_asks_of_a_metric():
    from polypool.metrics import BoundaryIoU, TrimapIoU

    for metric in (BoundaryIoU, TrimapIoU):
        assert metric.is_differentiable is False and metric.higher_is_better is True
        assert metric.full_state_update is False
        assert (metric.plot_lower_bound, metric.plot_upper_bound) == (0.0, 1.0)
