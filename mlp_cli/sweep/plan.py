"""The plan of a sweep: what it runs. The command line's KEY=V1,V2 axes and the sweep file
parsed and checked, the trials expanded (a grid, or seeded random draws), and every trial's
config validated once, its data section resolved and its network checked, before anything
starts: a bad value is one ConfigError or ShapeError naming the trial, with nothing written.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from mlp_cli import config as config_mod
from mlp_cli import selection
from mlp_cli.config import ConfigError
from mlp_cli.errors import ShapeError

METRICS = selection.METRICS
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
# One thread per trial: on this project's 2-core machine, two trials on one thread each finished
# the MNIST LeNet-5 grid sooner than one trial at a time on two threads (README, "Sweeps").
DEFAULT_TRIAL_THREADS = 1


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
    # The trials' validated configs by name (trial_configs), made once: by make_plan, or for a
    # sweep read back from its folder by the run. Not part of sweep.yaml.
    configs: dict[str, config_mod.Config] | None = field(default=None, repr=False, compare=False)

    def to_file(self) -> dict:
        """What sweep.yaml holds."""
        data = asdict(replace(self, configs=None))
        del data["configs"]
        return data


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
        if item.startswith("~"):  # removes a key the file sets (config.apply_overrides), in every trial
            plain.append(item)
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad argument {item!r}: write KEY=VALUE or KEY=V1,V2,... (e.g. optim.lr=0.01,0.05), "
                              "or ~KEY to remove a key the file sets")
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
    plan.configs = trial_configs(plan, raw)  # every trial validated, once, before anything starts
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


def trial_hparams(trial: Trial) -> dict:
    """The trial's varied keys and values, as TensorBoard's HParams tab shows them."""
    return {key: scalar(value) for key, _, value in (item.partition("=") for item in trial.overrides)}


def trial_threads() -> int:
    value = os.environ.get("MLP_CLI_THREADS")
    try:
        return max(1, int(value)) if value else DEFAULT_TRIAL_THREADS
    except ValueError:
        raise ConfigError(f"MLP_CLI_THREADS={value!r} is not a number of threads; unset it or give e.g. 1") from None
