"""One C-index for the wsi app and the runtime's audit (``medtransfer.shared.metrics``)."""

import math

import numpy as np
import pytest

from medtransfer.shared.metrics import c_index


def test_c_index_orders_pairs_by_risk() -> None:
    t = np.array([2.0, 4.0, 6.0, 8.0])
    e = np.ones(4)
    assert c_index(t, e, -t) == pytest.approx(1.0)  # earlier event, higher risk
    assert c_index(t, e, t) == pytest.approx(0.0)
    # comparable pairs (the earlier time is an event): (0,1) (0,2) (0,3) right, (2,3) wrong
    assert c_index(t, np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.1, 0.2])) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "times, events",
    [
        ([1.0, 2.0, 3.0], [0, 0, 0]),  # all censored
        ([10.0, 5.0, 4.0], [1, 0, 0]),  # the only event comes after every other time
        ([3.0], [1]),  # one case
        ([], []),
    ],
)
def test_c_index_is_nan_when_no_pair_is_comparable(times: list, events: list) -> None:
    risk = np.linspace(0, 1, len(times))
    assert math.isnan(c_index(np.array(times), np.array(events), risk))


def test_audit_and_wsi_report_the_same_c_index() -> None:
    from medtransfer.apps.wsi import survival

    assert survival.c_index is c_index
