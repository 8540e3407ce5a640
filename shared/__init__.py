"""medtransfer.shared: the transfer-learning core every app stands on.

Torch-free modules (safe for the runtime): ``manifest``, ``config``, ``runtime``, ``utils``,
``data.registry``.  Torch modules: ``registry``, ``peft``, ``finetune``, ``export``, ``models``.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # one version source: pyproject.toml
    __version__ = version("medtransfer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
