"""Metrics that more than one package reports, computed by the maintained libraries.

Apps and the runtime core (``audit``) import these, so that one metric has one definition and
one way of saying "undefined" (NaN), wherever it is reported.
"""

from __future__ import annotations

import numpy as np


def c_index(times: np.ndarray, events: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index (scikit-survival ``concordance_index_censored``).

    Args:
        times: observed times.
        events: truthy where the event was observed (not censored).
        risk: predicted risk (higher = earlier event).

    Returns:
        The C-index, or NaN when no pair is comparable (no event, e.g. a small validation split of
        censored patients only, or events only after every other time).
    """
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    ev = np.asarray(events).astype(bool)
    if len(ev) < 2 or not ev.any():
        return float("nan")
    try:
        return float(concordance_index_censored(ev, np.asarray(times, float), np.asarray(risk, float))[0])
    except (ZeroDivisionError, NoComparablePairException):  # events but no comparable pair (either sksurv)
        return float("nan")
