"""On/off switches read from ``MEDTRANSFER_*`` environment variables.  Torch-free."""

from __future__ import annotations

import os

__all__ = ["env_off", "env_on"]

_OFF = ("0", "off", "no", "false")
_ON = ("1", "on", "yes", "true")


def _value(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def env_off(name: str) -> bool:
    """Whether ``$name`` turns something off (``0``/``off``/``no``/``false``, any case).

    Args:
        name: the environment variable.

    Returns:
        True only for those values; unset or anything else is False (the default stays on).
    """
    return _value(name) in _OFF


def env_on(name: str) -> bool:
    """Whether ``$name`` turns something on (``1``/``on``/``yes``/``true``, any case).

    Args:
        name: the environment variable.

    Returns:
        True only for those values; unset or anything else is False (the default stays off).
    """
    return _value(name) in _ON
