"""The training loop: epochs of mini-batch SGD, validation, metrics.csv and checkpoints.

Reproducibility: the initial weights come from `seed`, and each epoch's shuffling,
augmentation and dropout from generators derived from (seed, epoch). A run resumed after
epoch k therefore replays exactly the numbers a straight run would, with nothing but the
weights and the optimizer state saved.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlp_cli import checkpoint, shapes
from mlp_cli.config import Config, ConfigError
from mlp_cli.errors import CheckpointError, Divergence, RuntimeFailure

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
NUM_CLASSES = {"circles": 2, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def is_better(val_acc, val_loss, best_acc, best_loss) -> bool:
    """The model-selection rule: higher validation accuracy; on a tie (frequent with small
    validation sets) the lower validation loss."""
    if val_acc is None:
        return False
    return best_acc is None or val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)


def best_row(rows: list[dict]) -> int | None:
    """Index of the metrics.csv row whose epoch best.safetensors holds (None without validation)."""
    best, best_acc, best_loss = None, None, None
    for i, row in enumerate(rows):
        acc, loss = row.get("val_acc"), row.get("val_loss")
        if acc in (None, "") or loss in (None, ""):
            continue
        if is_better(float(acc), float(loss), best_acc, best_loss):
            best, best_acc, best_loss = i, float(acc), float(loss)
    return best


class Interrupted(RuntimeFailure):
    """Ctrl-C during training, after the last checkpoint was made safe (exit code 130)."""


@dataclass
class RunResult:
    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_val_acc: float | None
    test: dict | None


def check_network(cfg: Config) -> tuple[list[int], list[shapes.LayerInfo]]:
    """Shape inference of the config's network, before any data is loaded (ShapeError if it does not fit)."""
    input_shape = shapes.dataset_input_shape(cfg.data)
    infos = shapes.resolve(input_shape, [layer.model_dump() for layer in cfg.model.layers])
    classes = NUM_CLASSES.get(cfg.data.dataset)
    if classes is not None:
        check_outputs(infos, classes, cfg.data.dataset)
    return input_shape, infos


def build_network(cfg: Config, architecture: list[dict], dtype=np.float32):
    """The engine network of a config, initialized from its seed as `mlp-cli train` does."""
    from mlp_cli.nn.model import build

    return build(architecture, rng=np.random.default_rng(cfg.seed), weight_init=cfg.model.init.weight,
                 init_std=cfg.model.init.std, bias_init=cfg.model.init.bias, dtype=dtype)


def check_outputs(infos, num_classes: int, dataset: str) -> None:
    out = infos[-1].output_shape
    if list(out) != [num_classes]:
        raise ConfigError(
            f"invalid config: the network ends with output shape {out} but {dataset} has {num_classes} classes; "
            f"make the last layer {{type: linear, out_features: {num_classes}}}")


class Console:
    """Where progress goes: bars only on a terminal, epoch lines unless quiet."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bars = not quiet and sys.stdout.isatty()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)

    def progress(self, iterable, **kwargs):
        from tqdm import tqdm

        return tqdm(iterable, disable=not self.bars, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block ends, so a checkpoint pair is never left half-updated."""
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    except ValueError:  # not in the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) <= upto_epoch]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    checkpoint.atomic_write_text(path, buf.getvalue())


def _fmt(value, pct=False):
    if value is None or value == "":
        return "-"
    return f"{100 * float(value):.2f}%" if pct else f"{float(value):.4f}"


def fit(cfg: Config, run_dir: Path, *, resume: bool = False, console: Console | None = None,
        on_epoch=None) -> RunResult:
    """Train `cfg` into `run_dir` (or continue the run there). Raises ConfigError/ShapeError
    before anything is written, DataError when data is missing, Divergence, Interrupted.

    `on_epoch(row)`, if given, is called after each epoch is committed to disk with that epoch's
    metrics.csv row as numbers (None where there is no validation), so a caller such as the
    sweep can report progress without reading the file back."""
    with contextlib.ExitStack() as stack:
        return _fit(cfg, Path(run_dir), resume, console or Console(), stack, on_epoch)


def _numbers(row: dict) -> dict:
    return {k: (None if row[k] in (None, "") else int(row[k]) if k == "epoch" else float(row[k])) for k in METRIC_COLUMNS}


def _fit(cfg: Config, run_dir: Path, resume: bool, console: Console, stack: contextlib.ExitStack,
         on_epoch=None) -> RunResult:
    from mlp_cli import data
    from mlp_cli.evaluate import checkpoint_result, evaluate, metrics_from_logits, predict
    from mlp_cli.nn.losses import softmax_cross_entropy
    from mlp_cli.nn.optim import Optimizer, lr_at
    from mlp_cli.nn.parallel import single_threaded_blas

    input_shape, infos = check_network(cfg)
    architecture = shapes.architecture(infos)

    splits = data.load_splits(cfg.data, cfg.seed, ("train", "val"))
    train_split, val_split = splits["train"], splits["val"]
    classes = list(train_split.classes)
    check_outputs(infos, len(classes), cfg.data.dataset)
    norm = data.normalization(train_split, cfg.data)

    last_path, best_path = run_dir / "last.safetensors", run_dir / "best.safetensors"
    metrics_path = run_dir / "metrics.csv"
    resolved = cfg.dump()
    meta = dict(architecture=architecture, input_shape=input_shape, normalization=norm, classes=classes,
                config=resolved)
    model = build_network(cfg, architecture)
    model.skip_input_gradient()
    stack.enter_context(single_threaded_blas())
    optimizer = Optimizer(cfg.optim)

    if resume:
        ckpt = checkpoint.load(last_path)
        opt_state, info = checkpoint.load_training_state(last_path)
        start = int(ckpt.metadata.get("epoch", -1))
        if info.get("epoch") != start:
            raise CheckpointError(f"{run_dir}: last.safetensors (epoch {start}) and its optimizer state "
                                  f"(epoch {info.get('epoch')}) do not belong together")
        if ckpt.architecture != architecture:
            raise ConfigError(f"invalid config: the network of {run_dir} differs from the config's; "
                              "a resumed run keeps its model section")
        model.load_state_dict(ckpt.state)
        optimizer.load_state_dict(opt_state)
        best_epoch, best_acc, best_loss = info.get("best_epoch"), info.get("best_val_acc"), info.get("best_val_loss")
        rows = _read_metrics(metrics_path, start)
        if start >= cfg.train.epochs:
            console.line(f"{run_dir} already has {start} epochs; raise train.epochs to train further")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        start, best_epoch, best_acc, best_loss, rows = 0, None, None, None, []
    checkpoint.atomic_write_text(run_dir / "config.yaml", _yaml(resolved))

    def save_last(epoch):  # callers hold Ctrl-C back (deferred_interrupt) around it
        checkpoint.save_training_state(last_path, optimizer.state_dict(), epoch=epoch,
                                       info={"best_epoch": best_epoch, "best_val_acc": best_acc,
                                             "best_val_loss": best_loss})
        checkpoint.save(last_path, model, epoch=epoch, **meta)

    if not resume:
        with deferred_interrupt():
            save_last(0)  # so that Ctrl-C during the first epoch still leaves a run to resume

    epochs = cfg.train.epochs
    epoch_bar = console.progress(range(start, epochs), desc="epochs", unit="epoch", initial=start, total=epochs)
    try:
        for epoch in epoch_bar:
            lr = lr_at(epoch, cfg.optim.lr, cfg.optim.schedule, epochs)
            data_rng = np.random.default_rng([cfg.seed, epoch, 1])
            model.set_rng(np.random.default_rng([cfg.seed, epoch, 2]))
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            n_batches = math.ceil(len(train_split.y) / cfg.train.batch_size)
            bar = console.progress(
                data.batches(train_split, cfg.train.batch_size, train=True, rng=data_rng, normalization=norm,
                             augment=cfg.data.augment),
                total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
            started = time.perf_counter()
            for step, (x, y) in enumerate(bar):
                with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss, handled below
                    logits = model.forward(x)
                    loss, dlogits = softmax_cross_entropy(logits, y, cfg.train.label_smoothing)
                if not math.isfinite(loss):
                    where = f"last good checkpoint: {last_path} (epoch {epoch})"
                    raise Divergence(
                        f"training diverged: the loss became {loss} at epoch {epoch + 1}, batch {step + 1} "
                        f"(lr {lr:g}); lower the learning rate, e.g. optim.lr={cfg.optim.lr / 10:g}; {where}")
                model.backward(dlogits)
                optimizer.step(model.named_params(), model.named_grads(), lr)
                loss_sum += loss * len(y)
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += len(y)
                if console.bars and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}", lr=f"{lr:.3g}")
            seconds = time.perf_counter() - started
            bar.close()

            val = evaluate(model, val_split, batch_size=cfg.train.eval_batch_size, normalization=norm,
                           augment=cfg.data.augment)
            val_acc, val_loss = val["accuracy"], val["loss"]
            improved = is_better(val_acc, val_loss, best_acc, best_loss)
            if improved or val_acc is None:
                best_epoch, best_acc, best_loss = epoch + 1, val_acc, val_loss
            rows.append({"epoch": epoch + 1, "train_loss": f"{loss_sum / seen:.6f}", "train_acc": f"{correct / seen:.6f}",
                         "val_loss": "" if val["loss"] is None else f"{val['loss']:.6f}",
                         "val_acc": "" if val_acc is None else f"{val_acc:.6f}", "lr": f"{lr:.8g}",
                         "seconds": f"{seconds:.3f}"})
            with deferred_interrupt():
                if improved or val_acc is None:
                    checkpoint.save(best_path, model, epoch=epoch + 1, **meta)
                save_last(epoch + 1)
                _write_metrics(metrics_path, rows)
            if on_epoch is not None:
                on_epoch(_numbers(rows[-1]))
            r = rows[-1]
            console.line(f"epoch {epoch + 1}/{epochs}  train loss {_fmt(r['train_loss'])} acc {_fmt(r['train_acc'], True)}"
                         f"  val loss {_fmt(r['val_loss'])} acc {_fmt(r['val_acc'], True)}  lr {lr:.4g}  {seconds:.1f}s"
                         + ("  *" if improved else ""))
    except KeyboardInterrupt:
        done = int(checkpoint.load(last_path).metadata["epoch"])
        raise Interrupted(f"interrupted; the checkpoint after epoch {done} is in {last_path}; "
                          f"continue with: mlp-cli train --resume {run_dir}") from None
    finally:
        epoch_bar.close()

    test = None
    if best_path.exists():
        best = checkpoint.load(best_path)
        best_model = checkpoint.load_model(best)
        test_split = data.load_splits(cfg.data, cfg.seed, ("test",))["test"]
        logits = predict(best_model, test_split, batch_size=cfg.train.eval_batch_size, normalization=norm,
                         augment=cfg.data.augment)
        test = checkpoint_result(best_path, best, "test", metrics_from_logits(logits, test_split.y, len(classes)))
        checkpoint.atomic_write_text(run_dir / "test_metrics.json", json.dumps(test, indent=2) + "\n")
        if cfg.train.plots:
            from mlp_cli import pictures

            pictures.draw_run(run_dir, metrics=rows, classes=classes, confusion=test["confusion_matrix"],
                              model=best_model, test_split=test_split, test_logits=logits, train_split=train_split,
                              normalization=norm)
    return RunResult(run_dir, len(rows), best_epoch, best_acc, test)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
