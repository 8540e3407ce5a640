"""Backbone registry: models created by name, pretrained weights from local files.

Example:
    >>> from medtransfer.shared.registry import create_model
    >>> net = create_model("resnet18", num_classes=6, in_chans=1)
"""

# Families register themselves on import.
from medtransfer.shared.registry import families as _families  # noqa: F401,E402
from medtransfer.shared.registry.core import (  # noqa: F401
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)
from medtransfer.shared.registry.weights import load_pretrained, resolve_weights  # noqa: F401
