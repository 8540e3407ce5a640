"""medtransfer.shared: the transfer-learning core every app stands on.

Torch-free modules (safe for the runtime): ``manifest``, ``config``, ``runtime``, ``utils``,
``data.registry``.  Torch modules: ``registry``, ``peft``, ``finetune``, ``export``, ``models``.
"""

__version__ = "0.1.0"
