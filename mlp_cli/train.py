"""The training loop: epochs of mini-batch SGD, validation, metrics.csv and checkpoints.

Reproducibility: the initial weights come from `seed`, and each epoch's shuffling,
augmentation and dropout from generators derived from (seed, epoch). A run resumed after
epoch k therefore replays exactly the numbers a straight run would, with nothing but the
weights and the optimizer state saved.

Every finished epoch is committed to the run directory in one atomic step (rundir.py): the
weights, the optimizer state with the best-so-far bookkeeping, the metrics rows and, when the
epoch is the best so far, best.safetensors. A kill at any instant therefore loses at most the
epoch in progress, and SIGINT and SIGTERM stop the loop without losing even that much of what
was finished (exit codes 130 and 143).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlp_cli import checkpoint, rundir, shapes
from mlp_cli.config import Config, ConfigError
from mlp_cli.errors import CheckpointError, Divergence, Interrupted, RuntimeFailure, ShapeError, UsageError
from mlp_cli.rundir import RunDir

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


@dataclass
class RunResult:
    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_val_acc: float | None
    test: dict | None


def check_network(cfg: Config, *, batch_size: int | None = None, dtype=np.float32
                  ) -> tuple[list[int], list[shapes.LayerInfo]]:
    """Shape inference of the config's network, before any data is loaded or any weight allocated:
    ShapeError if it does not fit, UsageError if training it (batches of `batch_size`, default
    train.batch_size, in `dtype`) cannot fit in the memory available."""
    from mlp_cli import system

    input_shape = shapes.dataset_input_shape(cfg.data)
    infos = shapes.resolve(input_shape, [layer.model_dump() for layer in cfg.model.layers])
    classes = NUM_CLASSES.get(cfg.data.dataset)
    if classes is not None:
        check_outputs(infos, classes, cfg.data.dataset)
    optimizer_buffers = {"sgd": int(cfg.optim.momentum > 0), "adam": 2, "adamw": 2}[cfg.optim.name]
    needed = shapes.training_bytes(input_shape, infos, batch_size or cfg.train.batch_size,
                                   eval_batch_size=0 if batch_size else cfg.train.eval_batch_size,
                                   state_copies=2 + optimizer_buffers, bytes_per_value=np.dtype(dtype).itemsize)
    biggest = max(infos, key=lambda info: info.params)
    system.check_memory(
        needed, f"invalid config: training this network ({shapes.total_params(infos):,} parameters, "
        f"{biggest.params:,} of them in layer {biggest.index} ({biggest.type}))",
        "use smaller layers, smaller batches or smaller images")
    return input_shape, infos


def build_network(cfg: Config, architecture: list[dict], dtype=np.float32, execution=None):
    """The engine network of a config, initialized from its seed as `mlp-cli train` does, run as
    `execution` says (an nn.execution.Execution; default: Execution.from_env())."""
    from mlp_cli.nn.execution import Execution
    from mlp_cli.nn.model import build

    return build(architecture, rng=np.random.default_rng(cfg.seed), weight_init=cfg.model.init.weight,
                 init_std=cfg.model.init.std, bias_init=cfg.model.init.bias, dtype=dtype,
                 execution=execution if execution is not None else Execution.from_env())


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

    def warn(self, text: str) -> None:
        """A warning on stderr, whatever the verbosity."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(f"warning: {text}", file=sys.stderr)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def progress(self, iterable, **kwargs):
        from tqdm import tqdm

        return tqdm(iterable, disable=not self.bars, dynamic_ncols=True, **kwargs)




# ----------------------------------------------------------------------------- signals
class _Stopped(BaseException):
    """Raised by the signal handlers; becomes Interrupted once the run directory is settled."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM stop training; inside `hold()` (a commit) they wait until it ends.

    A kill -9 is survived by the commit protocol alone; holding the signals only spares a run
    the epoch whose commit was under way. Signal handlers exist only in the main thread, so
    elsewhere (a sweep's worker threads) this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self._held, self._pending, self._previous = False, None, {}

    def _handler(self, signum, _frame):
        if self._held:
            self._pending = signum
        else:
            raise _Stopped(signum)

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False

    @contextlib.contextmanager
    def hold(self):
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise _Stopped(signum)


# ----------------------------------------------------------------------------- the committed state
@dataclass
class State:
    """What a generation of the run directory holds: the run after `epoch` finished epochs."""

    epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    weights: dict | None = None
    architecture: list | None = None
    optimizer: dict | None = None
    best: tuple = (None, None, None)  # epoch, validation accuracy, validation loss
    ema: dict | None = None  # the moving average of the weights (train.ema), if the run keeps one


def metrics_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def read_state(run: RunDir, generation=None) -> State:
    """The state a generation holds, checked; CheckpointError(reason) if a file is damaged."""
    raw = run.read("metrics.csv", generation)
    try:
        rows = rundir.parse_metrics(raw.decode()) if raw else []
        epochs = [int(r["epoch"]) for r in rows]
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"metrics.csv is not readable ({e})") from None
    last = run.file("last.safetensors", generation)
    if last is None:
        if rows:
            raise CheckpointError("metrics.csv has rows but last.safetensors is missing")
        return State()
    ckpt = checkpoint.load(last)
    optim_file = run.file("last.optim.safetensors", generation)
    if optim_file is None:
        raise CheckpointError("last.optim.safetensors is missing")
    opt_state, info = checkpoint.load_training_state(optim_file)
    epoch = ckpt.metadata.get("epoch")
    if not isinstance(epoch, int) or info.get("epoch") != epoch:
        raise CheckpointError(f"last.safetensors (epoch {epoch}) and last.optim.safetensors "
                              f"(epoch {info.get('epoch')}) do not belong together")
    if epochs != list(range(1, epoch + 1)):
        raise CheckpointError(f"metrics.csv has rows for {len(rows)} epochs but last.safetensors is epoch {epoch}")
    ema = {k[len(EMA_PREFIX):]: v for k, v in opt_state.items() if k.startswith(EMA_PREFIX)}
    opt_state = {k: v for k, v in opt_state.items() if not k.startswith(EMA_PREFIX)}
    return State(epoch, rows, ckpt.state, ckpt.architecture, opt_state,
                 (info.get("best_epoch"), info.get("best_val_acc"), info.get("best_val_loss")), ema or None)


def _checked_state(run: RunDir, from_epoch: int | None) -> State:
    """The newest intact state (or the one of `from_epoch`); a clear CheckpointError otherwise."""
    generations = run.generations()
    if from_epoch is not None:
        found = {}
        for gen in generations:
            try:
                state = read_state(run, gen)
            except CheckpointError:
                continue
            found.setdefault(state.epoch, (gen, state))
        if from_epoch not in found:
            raise UsageError(f"{run.path} keeps no intact state of epoch {from_epoch}; it has epoch(s) "
                             f"{', '.join(map(str, sorted(found))) or 'none'}")
        gen, state = found[from_epoch]
        run.rollback(gen)
        return state
    try:
        return read_state(run, generations[0])
    except CheckpointError as damage:
        for gen in generations[1:]:
            try:
                good = read_state(run, gen)
            except CheckpointError:
                continue
            raise CheckpointError(
                f"{run.path} is damaged: {damage}. The last good state is epoch {good.epoch} (kept in {gen}); "
                f"continue from it with: mlp-cli train --resume {run.path} --from-epoch {good.epoch}") from None
        raise CheckpointError(
            f"{run.path} is damaged: {damage}, and no earlier state is intact; start the run again with: "
            f"mlp-cli train --config {run.path / 'config.yaml'} --out NEW_FOLDER") from None


# ----------------------------------------------------------------------------- starting and resuming
COMMIT_INTERVAL = 1.0  # seconds: the most a kill -9 can cost a run of very short epochs
# An epoch whose mean training loss is this many times that of guessing (ln of the class count)
# has diverged even if every number stayed finite: with a learning rate far too high the logits
# grow without bound (the MNIST MLP at lr 10: 684 after the first epoch, 300 times ln 10).
DIVERGED = 20
EMA_PREFIX = "ema."  # the moving average's tensors in last.optim.safetensors, beside the optimizer's
FROZEN_ON_RESUME = ("seed", "data", "model")  # they change what the finished epochs mean
MOVABLE = ("data.root",)  # where the data lives, not what it is


def _yaml(data, flow=None) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=100).encode()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _command() -> str:
    import shlex

    return shlex.join(["mlp-cli", *sys.argv[1:]])


def start_run(cfg: Config, run_dir, *, console: Console | None = None, on_epoch=None,
              command: str | None = None, execution=None) -> RunResult:
    """Train `cfg` in a new run directory `run_dir`, run as `execution` says (default:
    Execution.from_env(), recorded in history.yaml). Raises ConfigError/ShapeError before anything
    is written, UsageError if the folder holds a run or is in use, SaveError if it cannot be
    written, DataError, Divergence, Interrupted."""
    from mlp_cli import data

    from mlp_cli.nn.execution import Execution

    execution = execution if execution is not None else Execution.from_env()
    rundir.check_creatable(run_dir)  # before any file of the data set is read
    cfg = data.resolve_config(cfg)  # what config.yaml records: the absolute data root, the image size
    check_network(cfg)
    history = [{"from_epoch": 1, "command": command or _command(), "at": _now(), **execution.record()}]
    run = RunDir.create(run_dir, {"config.yaml": _yaml(cfg.dump()), "history.yaml": _yaml(history, flow=False)})
    return _train(run, cfg, State(), console or Console(), on_epoch, execution)


def resume_run(run_dir, overrides=(), *, console: Console | None = None, on_epoch=None,
               from_epoch: int | None = None, command: str | None = None, execution=None) -> RunResult:
    """Continue the run in `run_dir` from its last committed epoch (or `from_epoch`), with
    `overrides` of its config. Overrides of seed, data or model are refused (UsageError): they
    would change what the finished epochs mean. The others hold from the next epoch on and are
    recorded in history.yaml, as is `execution` (default: Execution.from_env()) when it is not the
    last recorded one: the engine and threads are settings of each invocation, not of the run."""
    import yaml

    from mlp_cli import config, data
    from mlp_cli.nn.execution import Execution

    execution = execution if execution is not None else Execution.from_env()
    console = console or Console()
    run = RunDir.open(run_dir)
    if run.restored:
        console.warn(f"{', '.join(run.restored)} in {run.path} had been replaced since the last commit and is the "
                     "committed version again; to change a setting of the run, pass it on the command line: "
                     f"mlp-cli train --resume {run.path} KEY=VALUE")
    try:
        saved = yaml.safe_load(run.read("config.yaml") or b"")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{run.path / 'config.yaml'} is damaged (not a YAML mapping)")
        cfg = config.validate(config.apply_overrides(saved, overrides), f"{run.path / 'config.yaml'}", recorded=True)
        if overrides:
            cfg = data.resolve_config(cfg)  # a moved data.root is recorded absolute, as at the start
        changed = _changes(saved, cfg.dump())
        frozen = [k for k in changed if k.split(".")[0] in FROZEN_ON_RESUME and k not in MOVABLE]
        if frozen:
            raise UsageError(
                f"a resumed run cannot change {', '.join(frozen)}: the epochs already trained used "
                f"{', '.join(f'{k}={_show(changed[k][0])}' for k in frozen)}; start a new run with "
                f"--config {run.path / 'config.yaml'} {' '.join(overrides)} --out NEW_FOLDER")
        check_network(cfg)
        state = _checked_state(run, from_epoch)
        # An override holds "from the next epoch": with none left to train it would hold for no
        # epoch, yet config.yaml and history.yaml would claim the finished epochs used it.
        if cfg.train.epochs < state.epoch:
            raise UsageError(f"{run.path} already has {state.epoch} epochs, more than train.epochs="
                             f"{cfg.train.epochs}; to train further give train.epochs above {state.epoch}")
        if state.epoch >= cfg.train.epochs and set(changed) - {"train.epochs"}:
            raise UsageError(f"{run.path} already has {state.epoch} epochs, so {', '.join(sorted(changed))} "
                             f"would hold for no epoch; add train.epochs={state.epoch + 1} (or more) to train "
                             f"further with them")
        history = yaml.safe_load(run.read("history.yaml") or b"") or []
        ran_as = execution.record()
        if changed or not history or any(history[-1].get(k) != v for k, v in ran_as.items()):
            if changed:
                _warn_schedule(console, cfg, state, saved)
            entry = {"from_epoch": state.epoch + 1, "command": command or _command(), "at": _now(), **ran_as}
            if changed:
                entry["changed"] = {k: {"from": old, "to": new} for k, (old, new) in changed.items()}
            history.append(entry)
            run.commit({"config.yaml": _yaml(cfg.dump()), "history.yaml": _yaml(history, flow=False)})
    except BaseException:
        run.release()
        raise
    return _train(run, cfg, state, console, on_epoch, execution)


def fit(cfg: Config, run_dir, *, resume: bool = False, console: Console | None = None, on_epoch=None,
        execution=None) -> RunResult:
    """Train `cfg` into `run_dir`, a new run (start) or, with resume=True, the run already there
    (whose saved config is `cfg`). `on_epoch(row, committed)` is called after each epoch with its
    metrics.csv row (numbers) and whether the epoch is committed to disk yet (see COMMIT_INTERVAL)."""
    if resume:
        return resume_run(run_dir, console=console, on_epoch=on_epoch, execution=execution)
    return start_run(cfg, run_dir, console=console, on_epoch=on_epoch, execution=execution)


def _changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (old, new) for every value that differs (lists compared whole)."""
    out = {}
    for key in dict.fromkeys([*old, *new]):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_changes(a, b, name + "."))
        elif a != b:
            out[name] = (a, b)
    return out


def _show(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # data.val_size 5000, not 5000.0
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _warn_schedule(console: Console, cfg: Config, state: State, saved: dict) -> None:
    """Say so when the finished epochs followed a schedule that the new train.epochs changes."""
    from mlp_cli.nn.optim import lr_at

    old_epochs, done = saved.get("train", {}).get("epochs"), state.epoch
    if old_epochs == cfg.train.epochs or done == 0:
        return
    now = [f"{lr_at(e, cfg.optim.lr, cfg.optim.schedule, cfg.train.epochs):.8g}" for e in range(done)]
    if now != [row["lr"] for row in state.rows]:
        def span(a, b):
            return f"epoch {a}" if a == b else f"epochs {a}-{b}"

        console.warn(f"the {cfg.optim.schedule.name} learning-rate schedule depends on train.epochs: {span(1, done)} "
                     f"followed it for a {old_epochs}-epoch run, {span(done + 1, cfg.train.epochs)} follow"
                     f"{'s' if done + 1 == cfg.train.epochs else ''} it for a {cfg.train.epochs}-epoch run, so the result "
                     f"will differ from a {cfg.train.epochs}-epoch run trained from the start")


# ----------------------------------------------------------------------------- the loop
def _divergence(what: str, epoch: int, cfg: Config, run_dir: Path) -> Divergence:
    """A diverged run's one message: what happened, the fix, and what was kept (`epoch` finished ones)."""
    kept = f"last good checkpoint: {run_dir / 'last.safetensors'} (epoch {epoch})" if epoch else "no epoch finished"
    return Divergence(f"training diverged: {what}; lower the learning rate, e.g. optim.lr={cfg.optim.lr / 10:g}; {kept}")


def _train(run: RunDir, cfg: Config, state: State, console: Console, on_epoch, execution) -> RunResult:
    signals = StopSignals()
    try:
        with signals, contextlib.ExitStack() as stack:
            return _epochs(run, cfg, state, console, on_epoch, signals, stack, execution)
    except _Stopped as stop:
        name, code = ("SIGTERM", 143) if stop.signum == signal.SIGTERM else ("Ctrl-C", 130)
        done = read_state(run).epoch
        raise Interrupted(f"interrupted by {name}; {done} finished epoch{'s' * (done != 1)} saved in {run.path}; "
                          f"continue with: mlp-cli train --resume {run.path}", code) from None
    except (ConfigError, RuntimeFailure, ShapeError, UsageError) as e:
        # A run that could not begin (bad data, a config the data contradicts, an unwritable
        # folder) leaves nothing behind; one that diverged stays, to be resumed with other settings.
        if run.created and not isinstance(e, Divergence) and not (run.path / "last.safetensors").exists():
            run.remove()
        raise
    finally:
        run.release()


def _epochs(run: RunDir, cfg: Config, state: State, console: Console, on_epoch, signals: StopSignals,
            stack: contextlib.ExitStack, execution) -> RunResult:
    from mlp_cli import data
    from mlp_cli.evaluate import checkpoint_result, evaluate, metrics_from_logits, predict
    from mlp_cli.nn import warm_up_compiled
    from mlp_cli.nn.losses import loss_function
    from mlp_cli.nn.optim import Optimizer, ema_update, lr_at
    from mlp_cli.nn.parallel import single_threaded_blas

    input_shape, infos = check_network(cfg)
    architecture = shapes.architecture(infos)
    run_dir = run.path
    softmax_cross_entropy = loss_function(execution)  # the engine's

    # All three splits before the first epoch: a problem with the test data must not wait for the end.
    splits = data.load_splits(cfg.data, cfg.seed, ("train", "val", "test"))
    train_split, val_split, test_split = splits["train"], splits["val"], splits["test"]
    classes = list(train_split.classes)
    check_outputs(infos, len(classes), cfg.data.dataset)
    norm = data.normalization(train_split, cfg.data)

    meta = dict(architecture=architecture, input_shape=input_shape, normalization=norm, classes=classes,
                config=cfg.dump())
    model = build_network(cfg, architecture, execution=execution)
    model.skip_input_gradient()
    stack.enter_context(single_threaded_blas())
    optimizer = Optimizer(cfg.optim, execution)
    # A layer class with compiled kernels says so (`has_compiled_kernels`); the execution may forbid them.
    if execution.compiled and not execution.reference and (
            any(getattr(layer, "has_compiled_kernels", False) for layer in model.layers)
            or (optimizer.name == "sgd" and optimizer.momentum)):
        # Their compiled kernels load on first use (Numba's import and the cached machine code,
        # about 0.3 s): now, so that no epoch's `seconds` carries it.
        warm_up_compiled(np.float32)
    if state.weights is not None:
        if state.architecture != architecture:
            raise ConfigError(f"invalid config: the network of {run_dir} differs from its config's; "
                              "a resumed run keeps its model section")
        model.load_state_dict(state.weights)
        optimizer.load_state_dict(state.optimizer)
    # With train.ema, a second network holds the moving average: it is what is evaluated and saved
    # as best.safetensors, while the trained weights go on in `model` (and in last.safetensors).
    ema_decay, evaluated, ema = cfg.train.ema, model, None
    if ema_decay:
        live = model.state_dict()
        ema = state.ema if state.ema is not None else {k: v.copy() for k, v in live.items()}
        ema_pairs = [(ema[k], live[k]) for k in live]
        evaluated = build_network(cfg, architecture, execution=execution)
        evaluated.skip_input_gradient()
    start, rows = state.epoch, list(state.rows)
    best_epoch, best_acc, best_loss = state.best
    epochs = cfg.train.epochs
    if start >= epochs and start > 0:
        console.line(f"{run_dir} already has {start} epochs; raise train.epochs to train further")

    epoch_bar = console.progress(range(start, epochs), desc="epochs", unit="epoch", initial=start, total=epochs)
    pending, last_commit = None, time.monotonic()  # a finished epoch not yet committed, and when we last did
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
                    raise _divergence(f"the loss became {loss} at epoch {epoch + 1}, batch {step + 1} (lr {lr:g})",
                                      epoch, cfg, run_dir)
                model.backward(dlogits)
                optimizer.step(model.named_params(), model.named_grads(), lr)
                if ema is not None:
                    for average, value in ema_pairs:
                        ema_update(average, value, ema_decay)
                loss_sum += loss * len(y)
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += len(y)
                if console.bars and step % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}", lr=f"{lr:.3g}")
            seconds = time.perf_counter() - started
            bar.close()
            chance = math.log(len(classes))
            if loss_sum / seen > DIVERGED * chance:
                raise _divergence(f"the mean training loss of epoch {epoch + 1} was {loss_sum / seen:.4g}, more than "
                                  f"{DIVERGED} times that of guessing (ln {len(classes)} = {chance:.3g}; lr {lr:g})",
                                  epoch, cfg, run_dir)

            if ema is not None:
                evaluated.load_state_dict(ema)
            val = evaluate(evaluated, val_split, batch_size=cfg.train.eval_batch_size, normalization=norm,
                           augment=cfg.data.augment)
            val_acc, val_loss = val["accuracy"], val["loss"]
            improved = is_better(val_acc, val_loss, best_acc, best_loss)
            if improved or val_acc is None:
                best_epoch, best_acc, best_loss = epoch + 1, val_acc, val_loss
            rows.append({"epoch": epoch + 1, "train_loss": f"{loss_sum / seen:.6f}", "train_acc": f"{correct / seen:.6f}",
                         "val_loss": "" if val["loss"] is None else f"{val['loss']:.6f}",
                         "val_acc": "" if val_acc is None else f"{val_acc:.6f}", "lr": f"{lr:.8g}",
                         "seconds": f"{seconds:.3f}"})
            training_state = optimizer.state_dict()
            if ema is not None:
                training_state.update({EMA_PREFIX + k: v for k, v in ema.items()})
            files = {
                "last.safetensors": checkpoint.model_bytes(model, epoch=epoch + 1, **meta),
                "last.optim.safetensors": checkpoint.training_state_bytes(
                    training_state, epoch=epoch + 1,
                    info={"best_epoch": best_epoch, "best_val_acc": best_acc, "best_val_loss": best_loss}),
                "metrics.csv": metrics_csv(rows),
                "test_metrics.json": None,  # belongs to a finished run; this one goes on
            }
            if improved or val_acc is None:
                files["best.safetensors"] = (files["last.safetensors"] if ema is None else
                                             checkpoint.model_bytes(evaluated, epoch=epoch + 1, **meta))
            elif pending is not None and "best.safetensors" in pending:
                files["best.safetensors"] = pending["best.safetensors"]
            pending = files
            # Commit every epoch, except epochs so short (a toy set) that the commits would cost
            # more than the training: then once a second, and always at the end, on a signal and
            # before a divergence is reported. What a kill loses is recomputed exactly by a resume.
            committed = epoch + 1 == epochs or time.monotonic() - last_commit >= COMMIT_INTERVAL
            if committed:
                with signals.hold():
                    run.commit(pending)
                pending, last_commit = None, time.monotonic()
            r = rows[-1]
            console.line(f"epoch {epoch + 1}/{epochs}  train loss {_fmt(r['train_loss'])} acc {_fmt(r['train_acc'], True)}"
                         f"  val loss {_fmt(r['val_loss'])} acc {_fmt(r['val_acc'], True)}  lr {lr:.4g}  {seconds:.1f}s"
                         + ("  *" if improved else ""))
            if on_epoch is not None:
                on_epoch({k: (float(v) if v != "" else None) for k, v in r.items()}, committed)
    except (_Stopped, Divergence):
        if pending is not None:
            with signals.hold():
                run.commit(pending)
        raise
    finally:
        epoch_bar.close()

    test = None
    best_path = run_dir / "best.safetensors"
    if best_path.exists():
        best = checkpoint.load(best_path)
        best_model = checkpoint.load_model(best, execution=execution)
        logits = predict(best_model, test_split, batch_size=cfg.train.eval_batch_size, normalization=norm,
                         augment=cfg.data.augment)
        test = checkpoint_result(best_path, best, "test", metrics_from_logits(logits, test_split.y, len(classes)))
        with signals.hold():
            run.commit({"test_metrics.json": (json.dumps(test, indent=2) + "\n").encode()})
        if cfg.train.plots:
            import warnings

            from mlp_cli import pictures

            # A picture that cannot be drawn (a full disk) is one "warning:" line like the others,
            # not Python's two-line warning that quotes this source line.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pictures.draw_run(run_dir, metrics=rows, classes=classes, confusion=test["confusion_matrix"],
                                  model=best_model, test_split=test_split, test_logits=logits,
                                  train_split=train_split, normalization=norm)
            for warning in caught:
                console.warn(str(warning.message))
    return RunResult(run_dir, len(rows), best_epoch, best_acc, test)


def _fmt(value, pct=False):
    if value is None or value == "":
        return "-"
    return f"{100 * float(value):.2f}%" if pct else f"{float(value):.4f}"
