"""Model selection: the one rule that says which epoch (or trial) is the best.

Higher validation accuracy wins; on a tie, which is frequent with small validation sets, the
lower validation loss; on a tie of both, the earlier one. The training loop keeps the epoch it
picks as best.safetensors, pictures and report mark it from metrics.csv, and a sweep picks its
best trial by the same rule (or by the lowest loss alone, with `metric: val_loss`).
Pure Python, no imports: anything may use it.
"""

from __future__ import annotations

# What a sweep can compare its trials by, and which way is better (Tune's `mode`).
METRICS = {"val_acc": "max", "val_loss": "min"}


def is_better(val_acc, val_loss, best_acc, best_loss) -> bool:
    """Whether (val_acc, val_loss) beats the best so far (best_acc None: there is none yet)."""
    if val_acc is None:
        return False
    return best_acc is None or val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)


def is_lower(val_loss, best_loss) -> bool:
    """The rule of `metric: val_loss`: a lower validation loss (best_loss None: none yet)."""
    return val_loss is not None and (best_loss is None or val_loss < best_loss)


def best_index(scores, metric: str = "val_acc") -> int | None:
    """Index of the best of `scores`, a sequence of (val_acc, val_loss) pairs with None where a
    value is unknown, by `metric` (val_acc: `is_better`, a missing loss counting as infinite;
    val_loss: `is_lower`). None when no score has the metric's value."""
    best, best_acc, best_loss = None, None, None
    for i, (acc, loss) in enumerate(scores):
        if metric == "val_loss":
            if is_lower(loss, best_loss):
                best, best_loss = i, loss
        elif acc is not None and is_better(acc, float("inf") if loss is None else loss, best_acc, best_loss):
            best, best_acc, best_loss = i, acc, float("inf") if loss is None else loss
    return best


def best_row(rows: list[dict]) -> int | None:
    """Index of the metrics.csv row whose epoch best.safetensors holds (None without validation).
    `rows` as csv.DictReader gives them: the values are strings, "" where there is none."""
    return best_index([(float(r["val_acc"]), float(r["val_loss"])) if _given(r.get("val_acc")) and
                       _given(r.get("val_loss")) else (None, None) for r in rows])


def _given(value) -> bool:
    return value not in (None, "")
