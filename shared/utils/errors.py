"""User-facing errors: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class MedTransferError(Exception):
    """An error whose message is shown to the user as one line (no traceback)."""


class InputError(MedTransferError):
    """A bad input file: the message names the file and the problem.

    Args:
        path: the offending file.
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")


class ConfigError(MedTransferError):
    """Invalid configuration (unknown key, wrong type)."""


class BundleError(MedTransferError):
    """A bundle that is missing files or fails its sha256 check."""


class WeightsError(MedTransferError):
    """Pretrained weights missing or not matching their hash."""
