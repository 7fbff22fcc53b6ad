"""Evaluation: loss, accuracy, per-class accuracy and confusion matrix of a network on a split."""

from __future__ import annotations

import numpy as np

from mlp_cli.nn.losses import loss_function, softmax_cross_entropy


def forward(model, x: np.ndarray, *, test_hflip: bool = False) -> np.ndarray:
    """Logits of a batch x (B, C, H, W); with test_hflip (data.augment.test_hflip) the mean of the
    logits of x and of its horizontal mirror, the test-time counterpart of training on flips."""
    logits = model.forward(x)
    if not test_hflip:
        return logits
    from mlp_cli.data.pipeline import mirror

    return (logits + model.forward(mirror(x))) / 2


def predict(model, split, *, batch_size, normalization, augment):
    """Logits (N, K) float32 of the network in eval mode, in the split's order (center crops,
    mirror averaging when augment.test_hflip)."""
    from mlp_cli.data import batches

    model.eval()
    test_hflip = bool(getattr(augment, "test_hflip", False))
    chunks = [forward(model, x, test_hflip=test_hflip)
              for x, _ in batches(split, batch_size, train=False, rng=None, normalization=normalization, augment=augment)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int, loss=softmax_cross_entropy) -> dict:
    """`loss`: the engine's softmax cross-entropy (nn.losses.loss_function), so that a reference
    run's validation and test losses are the reference tier's too."""
    n = len(labels)
    if n == 0:
        return {"accuracy": None, "loss": None, "n": 0, "per_class_accuracy": [None] * num_classes,
                "confusion_matrix": [[0] * num_classes for _ in range(num_classes)]}
    mean_loss, _ = loss(logits, labels, 0.0)
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)  # rows: true class, columns: predicted
    support = confusion.sum(axis=1)
    per_class = [float(confusion[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(mean_loss),
        "n": int(n),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(model, split, *, batch_size, normalization, augment) -> dict:
    logits = predict(model, split, batch_size=batch_size, normalization=normalization, augment=augment)
    return metrics_from_logits(logits, split.y, len(split.classes), loss_function(model.execution))


def checkpoint_result(path, ckpt, split_name: str, metrics: dict) -> dict:
    """What `mlp-cli eval --json` prints and test_metrics.json holds."""
    return {"split": split_name, "checkpoint": str(path), "epoch": ckpt.metadata.get("epoch"),
            "classes": list(ckpt.classes), **metrics}


def evaluate_checkpoint(path, split_name: str, *, data_root: str | None = None, execution=None) -> dict:
    """Metrics of a checkpoint on one split, with the data, config and normalization that the
    checkpoint records (`data_root` replaces data.root), run as `execution` says (default:
    Execution.from_env())."""
    from mlp_cli import checkpoint, config, data
    from mlp_cli.errors import CheckpointError, DataError, RuntimeFailure, UsageError

    ckpt = checkpoint.load(path)
    model = checkpoint.load_model(ckpt, execution)
    try:
        cfg = config.validate(ckpt.config, f"{path} (its recorded config)", recorded=True)
    except config.ConfigError as e:  # a damaged checkpoint, not a usage error
        raise CheckpointError(str(e).splitlines()[0]) from None
    if split_name == "val" and cfg.data.val_size == 0:
        raise UsageError(f"{path}: the run trained without a validation split (data.val_size 0), so there is "
                         "none to evaluate; use --split test (or --split train)")
    data_cfg = cfg.data if data_root is None else cfg.data.model_copy(update={"root": data_root})
    try:
        split = data.load_splits(data_cfg, cfg.seed, (split_name,))[split_name]
    except DataError as e:
        e.option = "pass --data-root DIR"  # this command's way of pointing at the data
        raise
    if list(split.classes) != list(ckpt.classes):
        raise RuntimeFailure(f"the classes of the {split_name} split ({', '.join(map(str, split.classes[:4]))}, ...) "
                             f"differ from the checkpoint's ({', '.join(map(str, ckpt.classes[:4]))}, ...); "
                             "point --data-root at the data the model was trained on")
    from mlp_cli.nn.parallel import single_threaded_blas

    with single_threaded_blas():
        result = evaluate(model, split, batch_size=cfg.train.eval_batch_size, normalization=ckpt.normalization,
                          augment=cfg.data.augment)
    return checkpoint_result(path, ckpt, split_name, result)


def format_report(result: dict) -> str:
    """Human-readable evaluation: headline numbers, per-class accuracy, confusion matrix."""
    classes = [str(c) for c in result["classes"]]
    lines = [f"{result['checkpoint']} (epoch {result['epoch']}) on the {result['split']} split, {result['n']} examples",
             f"accuracy {100 * result['accuracy']:.2f}%   loss {result['loss']:.4f}", "", "per-class accuracy:"]
    width = max(len(c) for c in classes)
    for name, acc in zip(classes, result["per_class_accuracy"]):
        lines.append(f"  {name:<{width}}  {'-' if acc is None else f'{100 * acc:6.2f}%'}")
    matrix = result["confusion_matrix"]
    cell = max(5, len(str(max(max(row) for row in matrix))) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    lines.append(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(len(classes))))
    for i, (name, row) in enumerate(zip(classes, matrix)):
        lines.append(f"  {name[:width]:<{width}}" + "".join(f"{v:>{cell}}" for v in row) + f"   ({i})")
    return "\n".join(lines)
