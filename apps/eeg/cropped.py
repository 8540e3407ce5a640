"""Cropped decoding, the paper's protocol (``model.cropped: true``), on braindecode's own machinery.

The network (Deep4Net / ShallowFBCSPNet with ``final_conv_length=1``) is turned into a dense
prediction model with braindecode's ``to_dense_prediction_model`` (a model method since braindecode 1.0, a function
in ``braindecode.models.util`` before): one forward pass of a window gives ``n_preds_per_input``
predictions (the authors' ``get_output_shape(model, C, T)[2]``), one per crop of
the receptive-field length.  The loss is braindecode's :class:`CroppedLoss` (the mean of the dense
log-probabilities per window, then NLL), as in the authors' ``EEGClassifier(cropped=True,
criterion=CroppedLoss, criterion__loss_function=nll_loss)``.  A window's answer (evaluation,
export) is that same mean: :class:`WindowMean` wraps the dense model so the exported graph still
outputs ``logits [batch, 2]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CROPPED_MODELS = ("deep4", "shallow")


def make_dense(model: Any) -> Any:
    """Turn a braindecode model built with ``final_conv_length=1`` into a dense prediction model (in place).

    Args:
        model: Deep4Net or ShallowFBCSPNet.

    Returns:
        The same model.
    """
    if hasattr(model, "to_dense_prediction_model"):  # braindecode >= 1.0: a method of EEGModuleMixin
        model.to_dense_prediction_model()
    else:  # pragma: no cover - braindecode < 1.0 (the authors' version)
        from braindecode.models.util import to_dense_prediction_model

        to_dense_prediction_model(model)
    return model


def n_preds_per_input(model: Any, n_chans: int, n_times: int) -> int:
    """Dense predictions per input window (braindecode's ``get_output_shape(model, C, T)[2]``)."""
    import torch

    with torch.no_grad():
        was = model.training
        model.eval()
        shape = tuple(model(torch.zeros(1, int(n_chans), int(n_times))).shape)
        model.train(was)
    return int(shape[2]) if len(shape) > 2 else 1


def cropped_loss(weights: Sequence[float] | None = None):
    """The cropped loss: braindecode's ``CroppedLoss(nll_loss)`` on dense log-probabilities.

    Args:
        weights: optional class weights (``train.class_weight: balanced``).

    Returns:
        ``loss(out, y)``: ``out`` [batch, classes, n_preds] (dense) or [batch, classes] (a window's mean).
    """

    def loss(out, y):
        import torch
        import torch.nn.functional as F
        from braindecode.training import CroppedLoss

        w = None if weights is None else torch.as_tensor(weights, dtype=out.dtype, device=out.device)
        if out.ndim == 2:  # already reduced to one prediction per window
            return F.nll_loss(F.log_softmax(out, dim=1), y, weight=w)

        def nll(pred, target):
            return F.nll_loss(pred, target, weight=w)

        return CroppedLoss(nll)(F.log_softmax(out, dim=1), y)

    return loss


def window_logits(out: np.ndarray) -> np.ndarray:
    """A window's logits from dense outputs (numpy): mean over the crops of the log-softmax."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 2:
        return out
    z = out - out.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return logp.mean(axis=2)


def window_mean(dense: Any) -> Any:
    """Wrap a dense model so that it outputs one prediction per window ``[batch, classes]``.

    Args:
        dense: a model made dense by :func:`make_dense`.

    Returns:
        A ``torch.nn.Module`` whose ``forward(x)`` is the mean over crops of ``log_softmax(dense(x))``.
    """
    import torch
    from torch import nn

    class WindowMean(nn.Module):
        """Mean of the dense log-probabilities over a window's crops (the cropped-decoding answer)."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x)
            if out.ndim == 2:
                return out
            return torch.log_softmax(out, dim=1).mean(dim=2)

    return WindowMean(dense)
