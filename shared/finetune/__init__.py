"""One fine-tuning engine for every app: strategies, early stopping, checkpoints, resume, DDP."""

from medtransfer.shared.finetune.engine import (  # noqa: F401
    TRAIN_DEFAULTS,
    FitResult,
    fit,
    load_checkpoint,
    predict_arrays,
    resolve_device,
    weights_digest,
)
from medtransfer.shared.finetune.strategies import STRATEGIES, param_groups, setup_strategy  # noqa: F401
