"""`mlp-cli sweep`: many runs of one config with some keys varied, in parallel, on Ray Tune.

What is Tune's and what is ours. Tune schedules the trials (as many at a time as the CPUs
allow, each asking for its thread count in CPUs), restarts a trial whose worker process died,
and with --early-stop lets ASHA stop the trials that trail. Everything a user keeps is ours:
a trial is exactly `train.fit` into DIR/<trial name>/, a crash-safe run directory that resumes
from its last committed epoch. So Tune gets no checkpoints (the run directory is the
checkpoint, on storage every node shares, and a restarted trial simply resumes it), and Tune's
own experiment state, which is pickles, lives in a temporary folder and is deleted.

The sweep folder:
  sweep.yaml   what was asked (config, overrides, axes or distributions, metric) and the
               resulting trials (name and KEY=VALUE overrides each), with the config they
               share, so --resume never depends on the config file again;
  results.csv  one row per trial, rewritten atomically whenever a trial changes state; its
               status (pending, running, done, stopped, failed, lost, interrupted) is what
               --resume trusts: done, stopped and failed trials are not run again;
  sweep.png    the validation curves, and the metric against each varied key.

Random search draws its values here (seeded, with NumPy) rather than in Tune, so that every
trial's config exists and is validated before anything starts, and --resume runs exactly the
same trials. Ray is imported only by the functions that run trials: parsing, validation and
the files need neither Ray nor a network.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import math
import os
import re
import shlex
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mlp_cli import config as config_mod
from mlp_cli import selection
from mlp_cli.config import ConfigError
from mlp_cli.errors import EXIT_TERMINATED, STOP_SIGNALS, Interrupted, RuntimeFailure, ShapeError, UsageError, signal_exit

SWEEP_FILE, RESULTS_FILE, PLOT_FILE = "sweep.yaml", "results.csv", "sweep.png"
METRICS = selection.METRICS
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
FINAL = ("done", "stopped", "failed")  # --resume does not run these again
# One thread per trial: on this project's 2-core machine, two trials on one thread each finished
# the MNIST LeNet-5 grid sooner than one trial at a time on two threads (README, "Sweeps").
DEFAULT_TRIAL_THREADS = 1
MAX_FAILURES = 2  # restarts of a trial whose worker process died (not of a trial that failed)
INSTALL_HINT = "mlp-cli sweep runs on Ray Tune, which is not installed; install it with: pip install 'mlp-cli[sweep]'"


@dataclass
class Trial:
    name: str
    overrides: list[str]  # the varied values, as KEY=VALUE


@dataclass
class Plan:
    """What sweep.yaml holds: the request and the trials it resolved to."""

    config: str  # the config file, as given
    overrides: list[str]  # plain KEY=VALUE overrides, applied to every trial
    search: str  # grid | random
    params: dict  # KEY -> list of values, or {distribution: [arguments]}
    metric: str = "val_acc"
    early_stop: bool = False
    grace_period: int | None = None  # ASHA: epochs before a trial can be stopped (default: a quarter)
    seed: int = 0  # random search: seed of the draws
    trials: list[Trial] = field(default_factory=list)
    base: dict = field(default_factory=dict)  # the config with the plain overrides applied (raw YAML data)


# ----------------------------------------------------------------------------- the request
def split_values(text: str) -> list[str]:
    """Split a grid value at the commas outside brackets and quotes: `0.1,0.2` -> 2 values,
    `[28,28],[32,32]` -> 2 values, `[28,28]` -> 1 value."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def scalar(text: str):
    """A value as YAML reads it, except that numbers YAML 1.1 leaves as strings (1e38, 1e-3)
    are numbers, as the config's validation reads them anyway."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def parse_arguments(arguments) -> tuple[list[str], dict[str, list[str]]]:
    """Command-line KEY=VALUE arguments -> (plain overrides, grid axes KEY -> value texts)."""
    plain, axes = [], {}
    for item in arguments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad argument {item!r}: write KEY=VALUE or KEY=V1,V2,... (e.g. optim.lr=0.01,0.05)")
        values = split_values(text)
        if key in axes or any(p.partition("=")[0].strip() == key for p in plain):
            raise ConfigError(f"bad argument {item!r}: {key} is given twice; give it once (a comma list for several values)")
        if len(values) == 1:
            plain.append(f"{key}={text}")
        elif any(v == "" for v in values):
            raise ConfigError(f"bad argument {item!r}: the list of {key} has an empty value; "
                              f"write the values between commas, e.g. {key}=0.01,0.05")
        else:
            axes[key] = values
    return plain, axes


def read_sweep_file(path) -> dict:
    """The sweep YAML, checked: search, trials, seed, metric, grace_period and params."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found; pass an existing YAML file with --sweep") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the sweep file ({str(e).splitlines()[0]}); fix its YAML") from None
    allowed = ("search", "trials", "seed", "metric", "grace_period", "params")
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or not data["params"]:
        raise ConfigError(f"{path}: a sweep file is a mapping with 'params' (KEY: list or distribution) and "
                          "optionally search (grid|random), trials, seed, metric (val_acc|val_loss), grace_period")
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                              f"; allowed: {', '.join(allowed)}"))
    search = data.get("search", "grid")
    if search not in ("grid", "random"):
        raise ConfigError(f"{path}: search: {search!r} is not allowed; use grid or random")
    for key, what, low in (("trials", "a number of trials", 1), ("seed", "a seed", 0), ("grace_period", "epochs", 1)):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise ConfigError(f"{path}: {key}: {value!r} is not {what} (a whole number >= {low})")
    if data.get("metric", "val_acc") not in METRICS:
        raise ConfigError(f"{path}: metric: {data['metric']!r} is not allowed; use {' or '.join(METRICS)}")
    for key, spec in data["params"].items():
        check_param(path, str(key), spec, search)
    return data


def check_param(source, key: str, spec, search: str) -> None:
    where = f"{source}: params.{key}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: the list is empty; give at least one value")
        return
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: give a list of values or one distribution, e.g. {{loguniform: [1.0e-3, 1]}}")
    (name, args), = spec.items()
    if name not in DISTRIBUTIONS:
        hint = difflib.get_close_matches(str(name), DISTRIBUTIONS, n=1)
        raise ConfigError(f"{where}: unknown distribution {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; use one of {', '.join(DISTRIBUTIONS)}, or a list of values")
    if name == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values")
        return
    if search == "grid":
        raise ConfigError(f"{where}: {name} draws random values; use search: random, or a list of values for a grid")
    numbers = isinstance(args, list) and len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    if not numbers or not args[0] < args[1]:
        raise ConfigError(f"{where}: {name} needs [low, high] with low < high, e.g. {name}: [1, 10]")
    if name == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0 (got {args[0]})")
    if name == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs whole numbers [low, high] (both included)")


def make_plan(config_path, arguments, sweep_file=None, *, early_stop: bool = False) -> Plan:
    """Everything a sweep will run, validated: ConfigError/ShapeError naming the trial, nothing written."""
    plain, axes = parse_arguments(arguments)
    spec = read_sweep_file(sweep_file) if sweep_file else {"params": {}}
    search = spec.get("search", "grid")
    params = {key: [scalar(v) for v in values] for key, values in axes.items()}
    for key, value in spec["params"].items():
        if key in params or any(p.partition("=")[0] == key for p in plain):
            raise ConfigError(f"{key} is both on the command line and in {sweep_file}; give it in one place")
        params[str(key)] = value
    if not params:
        raise ConfigError("nothing to sweep: give a key with several values (e.g. optim.lr=0.01,0.05) or --sweep FILE")
    raw = config_mod.read_yaml(config_path)
    base = config_mod.apply_overrides(raw, plain)
    plan = Plan(config=str(config_path), overrides=plain, search=search, params=params,
                metric=spec.get("metric", "val_acc"), early_stop=early_stop, grace_period=spec.get("grace_period"),
                seed=spec.get("seed", 0), base=base)
    plan.trials = grid_trials(params) if search == "grid" else random_trials(params, spec.get("trials", 10), plan.seed)
    trial_configs(plan, raw)  # validates every trial before anything starts
    return plan


def _text(value) -> str:
    """A value as an override's right-hand side (YAML flow style: 0.01, true, [28, 28], adam)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def grid_trials(params: dict) -> list[Trial]:
    import itertools

    keys = list(params)
    lists = [spec if isinstance(spec, list) else spec["choice"] for spec in params.values()]
    rows = [[f"{k}={_text(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*lists)]
    return [Trial(name, overrides) for name, overrides in zip(trial_names(keys, rows), rows)]


def random_trials(params: dict, count: int, seed: int) -> list[Trial]:
    """`count` draws from the distributions (lists are choices), reproducible from `seed`.
    Floats keep 4 significant digits, so that names and commands stay readable."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        row = []
        for key, spec in params.items():
            name, args = ("choice", spec) if isinstance(spec, list) else next(iter(spec.items()))
            if name == "choice":
                value = args[int(rng.integers(len(args)))]
            elif name == "randint":
                value = int(rng.integers(args[0], args[1], endpoint=True))
            elif name == "uniform":
                value = float(f"{rng.uniform(args[0], args[1]):.4g}")
            else:  # loguniform
                value = float(f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.4g}")
            row.append(f"{key}={_text(value)}")
        rows.append(row)
    names = trial_names(list(params), rows)
    width = len(str(count - 1))
    return [Trial(f"{i:0{width}d}-{name}", row) for i, (name, row) in enumerate(zip(names, rows))]


def trial_names(keys: list[str], rows: list[list[str]]) -> list[str]:
    """Short folder names from the varied values: `lr0.01_batch_size64`. Each key is shortened
    to its last dotted parts that no other varied key shares; values keep only safe characters."""
    parts = [k.split(".") for k in keys]
    short = []
    for p in parts:
        n = 1
        while any(q != p and q[-n:] == p[-n:] for q in parts) and n < len(p):
            n += 1
        short.append(".".join(p[-n:]))
    names, seen = [], {}
    for row in rows:
        bits = []
        for key, item in zip(short, row):
            value = item.partition("=")[2]
            if isinstance(scalar(value), float):
                value = f"{scalar(value):.4g}"
            value = re.sub(r"[^A-Za-z0-9.+-]+", "x", value.strip("[]{}'\" ").replace(", ", "x")).strip("x") or "x"
            bits.append(f"{key}{value}")
        name = "_".join(bits)[:120]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def trial_configs(plan: Plan, raw: dict | None = None) -> dict[str, config_mod.Config]:
    """Every trial's validated config, its data section resolved as `mlp-cli train` resolves it
    (the absolute root; an image folder's image size, read once per distinct data section);
    ConfigError/ShapeError naming the trial. With `raw`, the config file as read, an error is
    blamed on the file, on a plain override as typed, or on the trial whose values cause it."""
    from mlp_cli import data, train

    configs, resolved = {}, {}
    for trial in plan.trials:
        source = f"trial {trial.name} ({' '.join(trial.overrides)})"
        try:
            if raw is None:  # a sweep read back from its folder: validated when it was made
                cfg = config_mod.validate(config_mod.apply_overrides(plan.base, trial.overrides), source)
            else:
                label = lambda item, source=source: f"override {item}" if item in plan.overrides else f"config: {source}"  # noqa: E731
                cfg = config_mod.validate(raw, plan.config, overrides=[*plan.overrides, *trial.overrides], label=label)
            key = repr(cfg.data.model_dump())
            if key not in resolved:
                resolved[key] = data.resolve(cfg.data)
            cfg = cfg.model_copy(update={"data": resolved[key]})
            train.check_network(cfg)
        except ConfigError as e:
            message = str(e)
            if source not in message and not message.startswith(("invalid override", f"invalid config: {plan.config}")):
                # bad override syntax, or a network that does not fit
                message = f"invalid config: {source}: {message.removeprefix('invalid config: ')}"
            raise ConfigError(message) from None
        except ShapeError as e:
            raise ShapeError(f"{source}: {e}") from None
        if plan.metric.startswith("val_") and cfg.data.val_size == 0:
            raise ConfigError(f"invalid config: {source}: data.val_size is 0, so there is no validation split to "
                              f"compare trials by ({plan.metric}); add e.g. data.val_size=0.1")
        configs[trial.name] = cfg
    return configs


# ----------------------------------------------------------------------------- the sweep folder
def write_plan(plan: Plan, out: Path) -> None:
    from mlp_cli.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SWEEP_FILE, yaml.safe_dump(asdict(plan), sort_keys=False, default_flow_style=None))


def read_plan(out) -> Plan:
    out = Path(out)
    try:
        data = yaml.safe_load((out / SWEEP_FILE).read_text())
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return Plan(**data)
    except FileNotFoundError:
        raise ConfigError(f"{out} is not a sweep folder (no {SWEEP_FILE}); pass a folder that mlp-cli sweep created") from None
    except (OSError, yaml.YAMLError, TypeError, KeyError) as e:
        raise ConfigError(f"{out / SWEEP_FILE}: not a sweep file of mlp-cli ({e})") from None


def result_row(plan: Plan, trial: Trial, out: Path, status: str, message: str = "") -> dict:
    """A results.csv row: the varied values, the status, and what the run directory holds."""
    from mlp_cli import report, rundir

    row = {"trial": trial.name}
    row.update({item.partition("=")[0]: item.partition("=")[2] for item in trial.overrides})
    row.update(status=status, best_val_acc="", best_epoch="", best_val_loss="", test_acc="", epochs="", seconds="",
               message=message)
    try:
        run = report.load_run(out / trial.name)
    except rundir.NotARun:
        return row
    acc, epoch = run.best
    losses = [float(r["val_loss"]) for r in run.metrics if r.get("val_loss")]
    seconds = sum(float(r["seconds"]) for r in run.metrics if r.get("seconds"))
    row.update(best_val_acc="" if acc is None else f"{acc:.6f}", best_epoch="" if epoch is None else epoch,
               best_val_loss=f"{min(losses):.6f}" if losses else "",
               test_acc="" if run.test_acc is None else f"{run.test_acc:.6f}", epochs=run.epochs,
               seconds=f"{seconds:.2f}")
    return row


def write_results(plan: Plan, out: Path, rows: dict[str, dict]) -> None:
    from mlp_cli.files import write_atomic

    buf = io.StringIO()
    fields = list(rows[plan.trials[0].name])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[t.name] for t in plan.trials)
    write_atomic(out / RESULTS_FILE, buf.getvalue())


def read_statuses(out: Path) -> dict[str, tuple[str, str]]:
    """Trial name -> (status, message) from results.csv (empty when there is none yet)."""
    try:
        with open(out / RESULTS_FILE, newline="") as f:
            return {r["trial"]: (r.get("status", ""), r.get("message", "")) for r in csv.DictReader(f)}
    except FileNotFoundError:
        return {}


def best_trial(plan: Plan, rows: dict[str, dict]) -> dict | None:
    """The row of the best trial by plan.metric, chosen as best.safetensors is (selection.py);
    None when no trial has a validation result."""
    trials = list(rows.values())
    scores = [(_number(r["best_val_acc"]), _number(r["best_val_loss"])) for r in trials]
    best = selection.best_index(scores, plan.metric)
    return None if best is None else trials[best]


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def reproduce_command(plan: Plan, trial_name: str, threads: int) -> str:
    trial = next(t for t in plan.trials if t.name == trial_name)
    words = ["mlp-cli", "train", "--config", plan.config, *plan.overrides, *trial.overrides]
    return f"MLP_CLI_THREADS={threads} " + " ".join(shlex.quote(w) for w in words)


def summary(plan: Plan, out: Path, rows: dict[str, dict]) -> str:
    """What the sweep found: counts, the best trial and the command that reproduces it."""
    statuses = [r["status"] for r in rows.values()]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "stopped", "failed", "lost")
                       if statuses.count(s))
    lines = [f"{len(rows)} trials: {counts or 'none finished'}; results in {out / RESULTS_FILE}, curves in {out / PLOT_FILE}"]
    best = best_trial(plan, rows)
    if best is not None:
        what = (f"validation accuracy {100 * float(best['best_val_acc']):.2f}% at epoch {best['best_epoch']}"
                if plan.metric == "val_acc" else f"validation loss {float(best['best_val_loss']):.4f}")
        test = f", test accuracy {100 * float(best['test_acc']):.2f}%" if best["test_acc"] else ""
        lines.append(f"best trial: {best['trial']} ({best['status']}), {what}{test}; run in {out / best['trial']}")
        lines.append(f"reproduce it: {reproduce_command(plan, best['trial'], trial_threads())}")
    return "\n".join(lines)


def draw(plan: Plan, out: Path, rows: dict[str, dict]) -> Path:
    from mlp_cli import pictures, report, rundir

    curves = []
    for trial in plan.trials:
        try:
            run = report.load_run(out / trial.name)
        except rundir.NotARun:
            continue
        curves.append((trial.name, *run.val_curve(), rows[trial.name]["status"]))
    key = "best_val_acc" if plan.metric == "val_acc" else "best_val_loss"
    points = {k: [(scalar(rows[t.name][k]), float(rows[t.name][key])) for t in plan.trials
                  if rows[t.name][key] != ""] for k in plan.params}
    label = "best validation accuracy" if plan.metric == "val_acc" else "lowest validation loss"
    return pictures.draw_sweep(curves, points, out / PLOT_FILE, metric_label=label, percent=plan.metric == "val_acc")


# ----------------------------------------------------------------------------- running on Ray
def trial_threads() -> int:
    value = os.environ.get("MLP_CLI_THREADS")
    try:
        return max(1, int(value)) if value else DEFAULT_TRIAL_THREADS
    except ValueError:
        raise ConfigError(f"MLP_CLI_THREADS={value!r} is not a number of threads; unset it or give e.g. 1") from None


def _check_writable(out: Path) -> None:
    """Before Ray starts: the sweep folder's nearest existing ancestor takes a new folder (made
    and removed again, since permissions alone do not tell, e.g. for root or under /proc)."""
    import tempfile

    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mlp-cli-", dir=existing))
    except OSError as e:
        raise RuntimeFailure(f"cannot write the sweep folder {out}: {existing} ({e.strerror or e}); "
                             "choose another --out") from None


def ray_installed() -> bool:
    """Without importing it: Ray reads RAY_AUTH_MODE when it is imported (raycluster.connected)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _absolute_env() -> dict[str, str]:
    """The environment a trial needs wherever it runs: its data and cache folders as absolute
    paths (a worker's working directory is not the driver's)."""
    env = {}
    for name in ("MLP_CLI_DATA", "MLP_CLI_CACHE"):
        if os.environ.get(name):
            env[name] = str(Path(os.environ[name]).expanduser().absolute())
    return env


def trial_hparams(trial: Trial) -> dict:
    """The trial's varied keys and values, as TensorBoard's HParams tab shows them."""
    return {key: scalar(value) for key, _, value in (item.partition("=") for item in trial.overrides)}


def write_hparams_config(plan: Plan, out: Path, configs: dict) -> None:
    """TensorBoard's HParams experiment at the sweep's root (each trial's run writes its values)."""
    if not any(cfg["train"].get("tensorboard", True) for cfg in configs.values()):
        return
    from mlp_cli import events

    values: dict[str, list] = {}
    for trial in plan.trials:
        for key, value in trial_hparams(trial).items():
            values.setdefault(key, []).append(value)
    events.write_sweep_hparams_config(out, values)


def run_trial(tune_config: dict, *, configs: dict, hparams: dict, out: str, env: dict, metric: str) -> None:
    """One trial, in a Ray worker: `train.fit` into OUT/<name>, reporting every committed epoch
    to Tune. A run directory already there (a restart after the worker died, or --resume) is
    continued from its last committed epoch. A trial that fails (divergence, missing data) is
    reported as such and ends normally: retrying it would fail the same way."""
    os.environ.update(env)  # before the engine reads MLP_CLI_THREADS
    from ray import tune

    from mlp_cli import rundir, train

    name = tune_config["trial"]
    run_dir = Path(out) / name
    last = {"epoch": 0, metric: -math.inf if METRICS[metric] == "max" else math.inf}

    cfg = config_mod.validate(configs[name], f"trial {name}")

    def report(row: dict, committed: bool, final: bool) -> None:
        # Every epoch, committed or not yet (train.COMMIT_INTERVAL): ASHA compares epochs, and a
        # worker that dies is restarted from the last committed one, which reports its epochs again.
        last.update({k: v for k, v in row.items() if v is not None})
        if not final:  # the last epoch (or the one early stopping ended on) is reported with "finished"
            tune.report(dict(last))

    try:
        from mlp_cli.nn.execution import Execution

        train.fit(cfg, run_dir, resume=rundir.has_run(run_dir), console=train.Console(quiet=True), on_epoch=report,
                  hparams=hparams[name], execution=Execution.from_env())
    except train.Interrupted:
        raise
    except (RuntimeFailure, UsageError) as e:  # divergence, missing data, the run in use elsewhere
        tune.report({**last, "failure": str(e)})
        return
    tune.report({**last, "finished": 1})


class _Signals:
    """Ctrl-C and SIGTERM while Tune runs raise KeyboardInterrupt at once, and the caller's
    ray.shutdown() ends the trials' processes. Tune's own way (its SIGINT handler, or a Stopper)
    waits for each trial to reach its next report, up to a whole epoch, and then 10 s more
    before killing it; a run directory needs no such care: it keeps its last committed epoch."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class _Console:
    """A tqdm bar over trials (on a terminal) and one line per finished trial, written to the
    streams the process started with, whatever Ray does to sys.stdout and sys.stderr meanwhile."""

    def __init__(self, total: int, done: int):
        from tqdm import tqdm

        self.out, self.err = sys.stdout, sys.stderr
        self.bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=self.err, dynamic_ncols=True,
                        disable=not self.err.isatty())

    def line(self, text: str) -> None:
        self.bar.write(text, file=self.out)
        self.out.flush()

    def counts(self, statuses: dict[str, str]) -> None:
        values = list(statuses.values())
        shown = [f"{s} {values.count(s)}" for s in ("done", "running", "stopped", "failed", "lost")
                 if values.count(s) or s in ("done", "running", "failed")]
        self.bar.set_postfix_str(", ".join(shown))


def _trial_line(name: str, row: dict, status: str, message: str = "") -> str:
    if status == "failed":
        return f"trial {name} failed: {message}"
    if status == "lost":
        return f"trial {name} lost: {message}"
    what = "done" if status == "done" else "stopped early (trailing)" if status == "stopped" else status
    acc = f"best val acc {100 * float(row['best_val_acc']):.2f}% at epoch {row['best_epoch']}" \
        if row["best_val_acc"] else "no validation result"
    test = f", test acc {100 * float(row['test_acc']):.2f}%" if row["test_acc"] else ""
    return f"trial {name} {what}: {acc}{test} ({row['epochs'] or 0} epochs, {row['seconds'] or 0} s training)"


def _progress(sweep: "_Sweep"):
    """The Tune callback that follows the trials in the driver. Tune pickles it into a state
    file of its own (which we never restore from), so it keeps the sweep in an attribute that
    it leaves out of the pickle."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self, sweep):
            self.sweep = sweep

        def __getstate__(self):
            return {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.sweep.set(trial.config["trial"], "running")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            name = trial.config["trial"]
            if "failure" in result:
                self.sweep.outcome[name] = ("failed", result["failure"])
            elif "finished" in result:
                self.sweep.outcome[name] = ("done", "")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.sweep.console.line(f"trial {trial.config['trial']}: its worker died; Tune restarts it from its "
                                    f"last committed epoch (restart {trial.num_failures} of {MAX_FAILURES})")

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            status, message = self.sweep.outcome.get(name, ("stopped", ""))  # ASHA stopped it
            self.sweep.set(name, status, message, announce=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            # Its process died once more than Tune restarts it (killed, out of memory, node lost):
            # `lost`, which --resume runs again, unlike `failed` (our own errors, which would recur).
            self.sweep.set(trial.config["trial"], "lost", f"its process died {MAX_FAILURES + 1} times; "
                           "--resume runs it again; Ray's logs: /tmp/ray/session_latest/logs", announce=True)

    return Progress(sweep)


@dataclass
class _Sweep:
    plan: Plan
    out: Path
    rows: dict
    console: _Console
    outcome: dict = field(default_factory=dict)

    def set(self, name: str, status: str, message: str = "", announce: bool = False) -> None:
        trial = next(t for t in self.plan.trials if t.name == name)
        self.rows[name] = result_row(self.plan, trial, self.out, status, message)
        write_results(self.plan, self.out, self.rows)
        if announce:
            self.console.line(_trial_line(name, self.rows[name], status, message))
            self.console.bar.update(1)
        self.console.counts({n: r["status"] for n, r in self.rows.items()})


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Send what Ray prints from Python in the driver (its own warnings, "(raylet) a worker died")
    to nowhere unless --verbose; our console keeps the original streams."""
    if verbose:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def run(plan: Plan, out, *, resume: bool = False, address: str | None = None, verbose: bool = False) -> dict:
    """Run the trials of `plan` not yet done (all of them unless `resume`) into `out`; return the
    results.csv rows. Raises Interrupted after Ctrl-C/SIGTERM, RuntimeFailure if Ray is missing
    or the cluster cannot be reached (nothing written then for a new sweep)."""
    out = Path(out).absolute()
    statuses = read_statuses(out) if resume else {}
    todo = [t for t in plan.trials if statuses.get(t.name, ("pending",))[0] not in FINAL]
    if not todo:  # every trial is final: nothing to run, nothing to write
        return {t.name: result_row(plan, t, out, *statuses[t.name]) for t in plan.trials}
    if not ray_installed():
        raise RuntimeFailure(INSTALL_HINT)
    _check_writable(out)
    configs = {name: cfg.dump() for name, cfg in trial_configs(plan).items()}
    threads = trial_threads()

    try:
        return _run(plan, out, todo, statuses, configs, threads, resume=resume, address=address, verbose=verbose)
    except OSError as e:  # the sweep's own files (results.csv, sweep.yaml, sweep.png); runs handle theirs
        raise RuntimeFailure(f"cannot write the sweep folder {out}: {e.strerror or e} ({e.filename or out})") from None


def _run(plan: Plan, out: Path, todo: list[Trial], statuses: dict, configs: dict, threads: int, *, resume: bool,
         address: str | None, verbose: bool) -> dict:
    from mlp_cli import raycluster

    with raycluster.connected(address, verbose=verbose) as where:
        if not resume:
            write_plan(plan, out)
        write_hparams_config(plan, out, configs)
        rows = {t.name: result_row(plan, t, out, *statuses.get(t.name, ("pending", ""))) for t in plan.trials}
        write_results(plan, out, rows)
        console = _Console(len(plan.trials), len(plan.trials) - len(todo))
        console.line(f"sweep of {len(plan.trials)} trials into {out}" + (f" ({len(todo)} to run)" if resume else "")
                     + f": {threads} thread{'s' * (threads > 1)} per trial, {where}")
        signals = _Signals()
        sweep = _Sweep(plan, out, rows, console)
        try:
            with signals, _quiet(verbose):
                _tune(plan, todo, configs, out, threads, sweep, verbose)
        except KeyboardInterrupt:
            signals.signal = signals.signal or signal.SIGINT
        finally:
            console.bar.close()
            # Trials cut short by a signal get no completion event: say what they are.
            for trial in plan.trials:
                status, message = rows[trial.name]["status"], rows[trial.name]["message"]
                rows[trial.name] = result_row(plan, trial, out, "interrupted" if status == "running" else status,
                                              message)
            write_results(plan, out, rows)
    draw(plan, out, rows)
    if signals.signal is not None:
        _, code = signal_exit(signals.signal)
        name = "SIGTERM" if code == EXIT_TERMINATED else "interrupted"
        raise Interrupted(f"{name}: the trials were stopped after their last committed epoch; "
                          f"continue with: mlp-cli sweep --resume {out}", code)
    return rows


def _tune(plan: Plan, todo: list[Trial], configs: dict, out: Path, threads: int, sweep: _Sweep, verbose: bool) -> None:
    import tempfile

    # Tune reads these when the Tuner is built: our handler, not Tune's, takes Ctrl-C; its
    # new output engine prints tables even at verbose=0, the old one stays quiet; no per-trial
    # result files in its (temporary) storage.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    from ray import tune

    scheduler = None
    if plan.early_stop:
        from ray.tune.schedulers import ASHAScheduler

        max_t = max(config_mod.validate(configs[t.name]).train.epochs for t in todo)
        grace = min(max_t, plan.grace_period or max(1, max_t // 4))
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=2)
    env = {**_absolute_env(), "MLP_CLI_THREADS": str(threads)}
    trainable = tune.with_parameters(run_trial, configs={t.name: configs[t.name] for t in todo},
                                     hparams={t.name: trial_hparams(t) for t in todo}, out=str(out), env=env,
                                     metric=plan.metric)
    storage = tempfile.mkdtemp(prefix="mlp-cli-tune-")
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": threads}),
            param_space={"trial": tune.grid_search([t.name for t in todo])},
            tune_config=tune.TuneConfig(metric=plan.metric, mode=METRICS[plan.metric], scheduler=scheduler),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=2 if verbose else 0,
                                      callbacks=[_progress(sweep)],
                                      failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))
        tuner.fit()
    finally:
        if verbose:
            sweep.console.line(f"Tune's own experiment state (for debugging) is in {storage}")
        else:
            import shutil

            shutil.rmtree(storage, ignore_errors=True)
