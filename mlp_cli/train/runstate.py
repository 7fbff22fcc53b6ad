"""What a run's state is, how it is read back from its run directory, and how a run starts or resumes.

A generation of the run directory (rundir.py) holds the run after `epoch` finished epochs: the
metrics rows, the weights, the optimizer state with the best-so-far bookkeeping and, with
train.ema, the moving average. `create` makes a new run directory (generation 0: config.yaml and
history.yaml); `reopen` opens an existing one at its newest intact state, applies the overrides a
resume may take and records them in history.yaml.

Metrics rows are numbers in memory (None for an empty value), rounded to what metrics.csv
records, so that the decisions taken from them (early stopping) are the same in a straight run
and in one resumed from the file.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import sys
from dataclasses import dataclass, field

from mlp_cli import events, rundir
from mlp_cli.config import Config
from mlp_cli.errors import CheckpointError, UsageError
from mlp_cli.rundir import RunDir

# metrics.csv's columns and how each is written
METRIC_FORMATS = {"epoch": "d", "train_loss": ".6f", "train_acc": ".6f", "val_loss": ".6f", "val_acc": ".6f",
                  "lr": ".8g", "seconds": ".3f"}
METRIC_COLUMNS = list(METRIC_FORMATS)
EMA_PREFIX = "ema."  # the moving average's tensors in last.optim.safetensors, beside the optimizer's
FROZEN_ON_RESUME = ("seed", "data", "model")  # they change what the finished epochs mean
MOVABLE = ("data.root",)  # where the data lives, not what it is


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


def metrics_row(**values) -> dict:
    """A metrics row of numbers, each rounded as metrics.csv writes it (None stays None)."""
    return {k: None if values[k] is None else type(values[k])(format(values[k], METRIC_FORMATS[k]))
            for k in METRIC_COLUMNS}


def metrics_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    writer.writerows([["" if row[k] is None else format(row[k], METRIC_FORMATS[k]) for k in METRIC_COLUMNS]
                      for row in rows])
    return buf.getvalue().encode()


def _numbers(row: dict) -> dict:
    """A metrics.csv row as read (strings) -> numbers."""
    return {k: None if row.get(k) in (None, "") else (int if k == "epoch" else float)(row[k]) for k in METRIC_COLUMNS}


def read_state(run: RunDir, generation=None) -> State:
    """The state a generation holds, checked; CheckpointError(reason) if a file is damaged."""
    from mlp_cli import checkpoint

    raw = run.read("metrics.csv", generation)
    try:
        rows = [_numbers(r) for r in rundir.parse_metrics(raw.decode())] if raw else []
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
    if [r["epoch"] for r in rows] != list(range(1, epoch + 1)):
        raise CheckpointError(f"metrics.csv has rows for {len(rows)} epochs but last.safetensors is epoch {epoch}")
    ema = {k[len(EMA_PREFIX):]: v for k, v in opt_state.items() if k.startswith(EMA_PREFIX)}
    opt_state = {k: v for k, v in opt_state.items() if not k.startswith(EMA_PREFIX)}
    return State(epoch, rows, ckpt.state, ckpt.architecture, opt_state,
                 (info.get("best_epoch"), info.get("best_val_acc"), info.get("best_val_loss")), ema or None)


def checked_state(run: RunDir, from_epoch: int | None) -> State:
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
def create(cfg: Config, run_dir, command: str | None, execution) -> tuple[RunDir, Config, State, tuple]:
    """A new run directory for `cfg`, its history recording `execution` (engine, threads), and the
    config's checked network (check_network's (input_shape, infos)). Raises ConfigError/ShapeError before anything is written,
    UsageError if the folder holds a run or is in use, SaveError if it cannot be written."""
    from mlp_cli import data
    from mlp_cli.train.network import check_network

    rundir.check_creatable(run_dir)  # before any file of the data set is read
    cfg = data.resolve_config(cfg)  # what config.yaml records: the absolute data root, the image size
    network = check_network(cfg)
    history = [{"from_epoch": 1, "command": command or _command(), "at": _now(), **execution.record()}]
    run = RunDir.create(run_dir, {"config.yaml": _yaml(cfg.dump()), "history.yaml": _yaml(history, flow=False)})
    return run, cfg, State(), network


def reopen(run_dir, overrides, from_epoch: int | None, command: str | None, console,
           execution) -> tuple[RunDir, Config, State, tuple]:
    """The run in `run_dir` at its last committed epoch (or `from_epoch`), with `overrides` of its
    config. Overrides of seed, data or model are refused (UsageError): they would change what the
    finished epochs mean. The others hold from the next epoch on and are recorded in history.yaml,
    as is `execution` when it is not the last recorded one: the engine and threads are settings of
    each invocation, not of the run."""
    run = RunDir.open(run_dir)
    if run.restored:
        console.warn(f"{', '.join(run.restored)} in {run.path} had been replaced since the last commit and is the "
                     "committed version again; to change a setting of the run, pass it on the command line: "
                     f"mlp-cli train --resume {run.path} KEY=VALUE")
    try:
        cfg, state, network = _reopened(run, overrides, from_epoch, command, console, execution)
    except BaseException:
        run.release()
        raise
    # The curves of epochs that were not committed (killed half-way) are trained again.
    events.discard_uncommitted(run.path, state.epoch)
    return run, cfg, state, network


def _reopened(run: RunDir, overrides, from_epoch, command, console, execution) -> tuple[Config, State, tuple]:
    import yaml

    from mlp_cli import config, data
    from mlp_cli.nn.optim import state_keys
    from mlp_cli.train.network import check_network

    saved = yaml.safe_load(run.read("config.yaml") or b"")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{run.path / 'config.yaml'} is damaged (not a YAML mapping)")
    cfg = config.validate(saved, f"{run.path / 'config.yaml'}", recorded=True, overrides=overrides)
    if overrides:
        cfg = data.resolve_config(cfg)  # a moved data.root is recorded absolute, as at the start
    # Compared with the saved config as validated, defaults filled in: a setting added to the tool
    # since the run began is not a change of the run.
    before = config.validate(saved, f"{run.path / 'config.yaml'}", recorded=True)
    changed = _changes(before.dump(), cfg.dump())
    frozen = [k for k in changed if k.split(".")[0] in FROZEN_ON_RESUME and k not in MOVABLE]
    if frozen:
        raise UsageError(
            f"a resumed run cannot change {', '.join(frozen)}: the epochs already trained used "
            f"{', '.join(f'{k}={_show(changed[k][0])}' for k in frozen)}; start a new run with "
            f"--config {run.path / 'config.yaml'} {' '.join(overrides)} --out NEW_FOLDER")
    network = check_network(cfg)
    state = checked_state(run, from_epoch)
    # An override holds "from the next epoch": with none left to train it would hold for no
    # epoch, yet config.yaml and history.yaml would claim the finished epochs used it.
    if cfg.train.epochs < state.epoch:
        raise UsageError(f"{run.path} already has {state.epoch} epochs, more than train.epochs="
                         f"{cfg.train.epochs}; to train further give train.epochs above {state.epoch}")
    if state.epoch >= cfg.train.epochs and set(changed) - {"train.epochs"}:
        raise UsageError(f"{run.path} already has {state.epoch} epochs, so {', '.join(sorted(changed))} "
                         f"would hold for no epoch; add train.epochs={state.epoch + 1} (or more) to train "
                         f"further with them")
    kept, needed = (state_keys(o.name, o.momentum) for o in (before.optim, cfg.optim))
    if kept != needed and state.optimizer:
        # What the finished epochs accumulated (momentum buffers, Adam's moments) means nothing to
        # the new update rule: it starts with none, as a new optimizer would in PyTorch.
        console.warn(f"the optimizer changes from {_describe(before.optim, kept)} to "
                     f"{_describe(cfg.optim, needed)}: it starts from epoch {state.epoch + 1} with no state")
        state.optimizer = {}
    history = yaml.safe_load(run.read("history.yaml") or b"") or []
    ran_as = execution.record()
    if changed or not history or any(history[-1].get(k) != v for k, v in ran_as.items()):
        entry = {"from_epoch": state.epoch + 1, "command": command or _command(), "at": _now(), **ran_as}
        if changed:
            _warn_schedule(console, cfg, state, saved)
            entry["changed"] = {k: {"from": old, "to": new} for k, (old, new) in changed.items()}
        history.append(entry)
        run.commit({"config.yaml": _yaml(cfg.dump()), "history.yaml": _yaml(history, flow=False)})
    return cfg, state, network


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


def _describe(optim, keys: tuple[str, ...]) -> str:
    """An optimizer and the state it keeps: "adam (exp_avg, exp_avg_sq, step)", "sgd (no state)"."""
    return f"{optim.name} ({', '.join(keys) or 'no state'})"


def _warn_schedule(console, cfg: Config, state: State, saved: dict) -> None:
    """Say so when the finished epochs followed a schedule that the new train.epochs changes."""
    from mlp_cli.nn.optim import lr_at

    old_epochs, done = saved.get("train", {}).get("epochs"), state.epoch
    if old_epochs == cfg.train.epochs or done == 0:
        return
    # The new settings under both lengths: what train.epochs alone changes (a new optim.lr changes
    # the rate of every schedule, and is not this warning's business).
    def rates(epochs):
        return [metrics_row(**{**row, "lr": lr_at(e, cfg.optim.lr, cfg.optim.schedule, epochs)})["lr"]
                for e, row in enumerate(state.rows)]

    if rates(cfg.train.epochs) != rates(old_epochs):
        def span(a, b):
            return f"epoch {a}" if a == b else f"epochs {a}-{b}"

        console.warn(f"the {cfg.optim.schedule.name} learning-rate schedule depends on train.epochs: {span(1, done)} "
                     f"followed it for a {old_epochs}-epoch run, {span(done + 1, cfg.train.epochs)} follow"
                     f"{'s' if done + 1 == cfg.train.epochs else ''} it for a {cfg.train.epochs}-epoch run, so the result "
                     f"will differ from a {cfg.train.epochs}-epoch run trained from the start")


def _yaml(data, flow=None) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=flow, width=100).encode()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _command() -> str:
    import shlex

    return shlex.join(["mlp-cli", *sys.argv[1:]])
