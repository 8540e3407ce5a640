"""Optional-dependency checks that import nothing (the apps' readers come from per-app extras)."""

from __future__ import annotations


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it.

    A module set to None in ``sys.modules`` counts as missing, as Python's import does.

    Args:
        module: import name (e.g. ``cv2``).

    Returns:
        True when it is imported already or can be found.
    """
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
