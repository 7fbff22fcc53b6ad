"""Softmax cross-entropy, fused with its gradient."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy of a batch and its gradient with respect to the logits.

    logits: (N, K) scores y~ (never softmax outputs); labels: (N,) integer classes.
    Returns (loss, dlogits) with loss a Python float and dlogits (N, K) in the logits' dtype.

    Seed: l = -y~_c + log sum_k exp(y~_k), computed with log-sum-exp after subtracting the
    row maximum so exp never overflows; dl/dy~ = y^ - y. The loss is the batch mean, so the
    gradient carries 1/N and the learning rate does not depend on the batch size.
    With label smoothing eps the target is y = (1 - eps) one_hot + eps / K (as in PyTorch).
    """
    N, K = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.zeros_like(logits)
    target[np.arange(N), labels] = 1
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / K
    loss = -float((target * log_probs).sum(dtype=np.float64)) / N
    dlogits = (np.exp(log_probs) - target) / N  # (y^ - y) / N
    return loss, dlogits.astype(logits.dtype, copy=False)
