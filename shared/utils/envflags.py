"""On/off switches read from ``MEDTRANSFER_*`` environment variables.  Torch-free."""

from __future__ import annotations

import os

__all__ = ["env_off", "env_on"]

_OFF = ("0", "off", "no", "false")
_ON = ("1", "on", "yes", "true")


def _value(name: str) -> str:
    return os.environ.get(name, "").strip().lower()


def env_off(name: str) -> bool:
    """Whether ``$name`` is ``0``/``off``/``no``/``false`` (any case): a switch whose default is on."""
    return _value(name) in _OFF


def env_on(name: str) -> bool:
    """Whether ``$name`` is ``1``/``on``/``yes``/``true`` (any case): a switch whose default is off."""
    return _value(name) in _ON
