"""Softmax and softmax cross-entropy (fused with its gradient): the one softmax of the fast engine,
also what predict and pictures turn logits into probabilities with. (The reference tier,
reference.py, keeps its own: it is the plain derivation the engine is checked against.)"""

from __future__ import annotations

import numpy as np


def _shifted_exp(logits: np.ndarray):
    """(logits - row max, exp of that, its row sums): the row maximum is subtracted so that exp
    never overflows, which changes neither the softmax nor the log-sum-exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return shifted, exp, exp.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities y^ = exp(y~) / sum_k exp(y~_k) of (N, K) logits, computed in float64 (N, K)."""
    _, exp, total = _shifted_exp(np.asarray(logits, np.float64))
    return exp / total


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy of a batch and its gradient with respect to the logits.

    logits: (N, K) scores y~ (never softmax outputs); labels: (N,) integer classes.
    Returns (loss, dlogits) with loss a Python float and dlogits (N, K) in the logits' dtype.

    The practical: l = -y~_c + log sum_k exp(y~_k), computed with log-sum-exp after subtracting the
    row maximum so exp never overflows; dl/dy~ = y^ - y. The loss is the batch mean, so the
    gradient carries 1/N and the learning rate does not depend on the batch size.
    With label smoothing eps the target is y = (1 - eps) one_hot + eps / K (as in PyTorch).
    """
    N, K = logits.shape
    rows = np.arange(N)
    shifted, exp, total = _shifted_exp(logits)
    log_probs = shifted - np.log(total)  # log y^, never log of a rounded softmax
    picked = log_probs[rows, labels].sum(dtype=np.float64)
    if label_smoothing:
        # y = (1 - eps) one_hot + eps / K
        loss = -((1 - label_smoothing) * picked + label_smoothing / K * log_probs.sum(dtype=np.float64)) / N
    else:
        loss = -picked / N
    grad = exp / total  # y^
    grad[rows, labels] -= 1 - label_smoothing
    if label_smoothing:
        grad -= label_smoothing / K
    grad /= N  # (y^ - y) / N
    return float(loss), grad.astype(logits.dtype, copy=False)


def loss_function(execution):
    """The softmax cross-entropy of an engine: this module's for the fast one, reference.py's for
    the reference. Both take (logits, labels, label_smoothing) and return (loss, dlogits)."""
    if execution is not None and execution.reference:
        from mlp_cli.nn.reference import softmax_cross_entropy as reference_loss

        return reference_loss
    return softmax_cross_entropy
