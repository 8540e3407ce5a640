"""Plausibility gates (``shared.runtime.gates``): the EEG gate's quantiles and its reasons."""

import numpy as np
import pytest

from medtransfer.shared.runtime.gates import eeg_reasons, row_quantiles

RNG = np.random.default_rng(7)


def _adversarial() -> np.ndarray:
    # every 32nd value (what the bracket sample sees) is 0, the rest spread far away: the sampled
    # bracket misses the wanted ranks and the full-row fallback must answer
    row = RNG.uniform(100, 200, 4096)
    row[::32] = 0.0
    return np.stack([row, -row])


@pytest.mark.parametrize(
    "x",
    [
        RNG.standard_normal((21, 60_000)) * 30,  # an EEG-like block
        np.round(RNG.standard_normal((5, 10_001)) * 3),  # heavy ties (quantised samples)
        np.zeros((3, 50)),  # flat
        RNG.standard_normal((2, 1)),
        RNG.standard_normal((2, 2)),
        RNG.standard_normal((4, 3)),
        RNG.standard_cauchy((3, 7_777)),  # far outliers
        np.sort(RNG.standard_normal((2, 5_000)), axis=1),
        np.sort(RNG.standard_normal((2, 5_000)), axis=1)[:, ::-1].copy(),
        _adversarial(),
    ],
    ids=["eeg", "ties", "flat", "n1", "n2", "n3", "cauchy", "sorted", "reversed", "adversarial"],
)
def test_row_quantiles_equal_numpy_bit_for_bit(x: np.ndarray) -> None:
    for qs in [(0.75, 0.25), (0.0, 1.0, 0.5, 0.1, 0.9, 0.33)]:
        np.testing.assert_array_equal(row_quantiles(x, qs), np.quantile(x, qs, axis=1))


def test_row_quantiles_refuses_quantiles_outside_0_1() -> None:
    with pytest.raises(ValueError, match="quantiles must lie in"):
        row_quantiles(np.zeros((1, 10)), [1.5])
    with pytest.raises(ValueError, match="quantiles must lie in"):
        row_quantiles(np.zeros((1, 10)), [float("nan")])


def test_row_quantiles_property() -> None:
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)

    @settings(max_examples=60, deadline=None)
    @given(
        hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 400)), elements=values),
        st.lists(st.floats(0, 1), min_size=1, max_size=4),
        st.integers(1, 40),
    )
    def check(x: np.ndarray, qs: list, stride: int) -> None:
        np.testing.assert_array_equal(row_quantiles(x, qs, stride=stride), np.quantile(x, qs, axis=1))

    check()


def test_eeg_reasons_name_flat_saturated_and_out_of_range_recordings() -> None:
    names = [f"c{i}" for i in range(10)]
    ok = RNG.standard_normal((10, 20_000)) * 20
    assert eeg_reasons(ok, names) == []
    flat = ok.copy()
    flat[3] = 5.0 + RNG.standard_normal(20_000) * 1e-3  # robust std far below 0.1 uV
    assert eeg_reasons(flat, names) == ["flat channel(s): c3"]
    clipped = ok.copy()
    clipped[:3] = np.clip(clipped[:3], -5, 5)  # 3 of 10 channels pinned at their rails
    assert eeg_reasons(clipped, names) == ["3 of 10 channels flat or saturated (limit 20%)"]
    volts = ok * 1e3  # a recording scaled 1000x: not EEG at this calibration
    assert any("exceeds the plausible EEG range" in r for r in eeg_reasons(volts, names))
    assert any("exceeds" in r for r in eeg_reasons(-volts, names))  # the peak of either sign
    with pytest.raises(Exception, match="NaN/inf"):
        bad = ok.copy()
        bad[0, 5] = np.nan
        eeg_reasons(bad, names)
