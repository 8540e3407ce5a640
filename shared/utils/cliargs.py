"""Value checks for the benches' ``argparse`` command lines (``python -m medtransfer...bench``).  Torch-free.

Each is an ``argparse`` ``type=``: a bad value ends the command with argparse's one-line
``error: argument --sizes: ...`` and exit status 2, before anything runs (a traceback, or a bench
that runs for minutes on a size of 0, otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer ``>= minimum``.

    Args:
        minimum: the smallest value accepted.

    Returns:
        The ``type=`` callable.
    """

    def check(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v}: expected at least {minimum}")
        return v

    return check


def int_list(minimum: int = 1, multiple_of: int = 1) -> Callable[[str], list[int]]:
    """A comma-separated list of integers (``256,512``), each ``>= minimum`` and a multiple of ``multiple_of``.

    Args:
        minimum: the smallest value accepted.
        multiple_of: every value must divide by this (e.g. an image size by the model's stride).

    Returns:
        The ``type=`` callable (returns the list; at least one value).
    """
    one = at_least(minimum)

    def check(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"'{text}': expected comma-separated numbers such as 256,512")
        values = [one(p) for p in parts]
        for v in values:
            if v % multiple_of:
                raise argparse.ArgumentTypeError(f"{v}: expected a multiple of {multiple_of}")
        return values

    return check


def positive_float(text: str) -> float:
    """A finite number above 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: expected a number above 0")
    return v


def choice_list(allowed: Sequence[str]) -> Callable[[str], str]:
    """A comma-separated list of names from ``allowed`` (``cpu,cuda``); returned as given.

    Args:
        allowed: the names accepted.

    Returns:
        The ``type=`` callable.
    """

    def check(text: str) -> str:
        names = [p.strip() for p in text.split(",") if p.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"'{text}': expected one or more of {', '.join(allowed)}")
        return text

    return check


def number_list(
    text: str, option: str, lo: float, hi: float, integer: bool = False, lo_open: bool = False
) -> list[float] | list[int]:
    """A comma-separated list of numbers for a typer option (``--fractions 0.1,0.5``), each finite and
    within ``lo`` .. ``hi`` (``lo`` itself excluded with ``lo_open``); at least one.

    Raises:
        ConfigError: one line naming ``option`` and the value (a traceback, or rows of results for a
            fraction of -0.5, otherwise).
    """
    import math

    from medtransfer.shared.utils.errors import ConfigError

    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    want = f"{'whole numbers' if integer else 'numbers'} {'above' if lo_open else 'from'} {lo:g} {'up ' if lo_open else ''}to {hi:g}"
    if not parts:
        raise ConfigError(f"{option} '{text}': expected comma-separated {want}")
    out: list = []
    for p in parts:
        try:
            v: float = int(p) if integer else float(p)
        except ValueError:
            raise ConfigError(f"{option} '{p}': expected {want}") from None
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise ConfigError(f"{option} '{p}': expected {want}")
        out.append(v)
    return out
