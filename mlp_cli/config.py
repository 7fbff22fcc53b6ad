"""Run configuration: the YAML schema, dotted overrides and friendly validation errors.

A config is validated completely before anything runs. Every problem becomes one
`ConfigError` whose message names where it comes from (the file, or the KEY=VALUE override as
typed), the key, what was wrong and what is allowed.
This module imports neither numpy nor torch, so `convshape --config` stays fast.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from mlp_cli import registry as R
from mlp_cli.errors import UsageError

DATASETS = R.DATASET_NAMES
LAYER_TYPES = R.LAYER_NAMES


MAX_CONFIG_BYTES = 2**20


class ConfigError(UsageError):
    """An invalid config or override; the CLI prints the message and exits with code 2."""


def recorded(info: ValidationInfo) -> bool:
    """Whether the config being validated is one a run wrote (validate(..., recorded=True))."""
    return bool(info.context and info.context.get("recorded"))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


def reject_unused(section: BaseModel, prefix: str, keys, why: str, info: ValidationInfo) -> None:
    """Refuse a value, other than the default, for a key that does not apply: silently ignoring
    it would let a run differ from what its config says. `why` completes "KEY does not apply: ...".
    Not for a config a run recorded (`recorded(info)`): those were valid when they ran."""
    if recorded(info):
        return
    for key in keys:
        if getattr(section, key) != type(section).model_fields[key].default:
            raise ValueError(f"{prefix}{key} does not apply: {why}; remove it (on the command line: ~{prefix}{key})")


IntPair = Union[Annotated[int, Field(ge=1)], tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]]
IntPairZero = Union[Annotated[int, Field(ge=0)], tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]


# ----------------------------------------------------------------------------- layers
def layer_keys(cls: type[Strict]) -> type[Strict]:
    """The keys of the layer types registry.py gives this class (its `schema`), with `type`
    narrowed to their names: the tag of the `Layer` union. The class declares `type: str` first,
    so that `type` stays the first key of a layer in config.yaml."""
    names = R.schemas(cls.__name__)
    assert names, f"no layer type in registry.py has the schema {cls.__name__}"
    return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__,
                        type=(Literal[names], ...))


@layer_keys
class Linear(Strict):
    type: str
    out_features: int = Field(ge=1)
    in_features: int | None = Field(default=None, ge=1)  # inferred; checked when given
    bias: bool = True


@layer_keys
class Conv2d(Strict):
    type: str
    out_channels: int = Field(ge=1)
    kernel_size: IntPair
    stride: IntPair = 1
    padding: IntPairZero = 0
    dilation: IntPair = 1
    in_channels: int | None = Field(default=None, ge=1)
    bias: bool = True


@layer_keys
class MaxPool2d(Strict):
    type: str
    kernel_size: IntPair
    stride: IntPair | None = None  # PyTorch's default: the kernel size
    padding: IntPairZero = 0
    dilation: IntPair = 1
    ceil_mode: bool = False


@layer_keys
class AvgPool2d(Strict):
    type: str
    kernel_size: IntPair
    stride: IntPair | None = None
    padding: IntPairZero = 0
    ceil_mode: bool = False


@layer_keys
class Activation(Strict):
    type: str


@layer_keys
class Dropout(Strict):
    type: str
    p: float = Field(default=0.5, ge=0.0, lt=1.0)


@layer_keys
class BatchNorm(Strict):
    type: str
    num_features: int | None = Field(default=None, ge=1)
    eps: float = Field(default=1e-5, gt=0)
    momentum: float = Field(default=0.1, gt=0, le=1)


_LAYER_MODELS = {t.name: globals()[t.schema] for t in R.LAYER_TYPES}  # the config's type -> its keys
Layer = Annotated[Union[tuple(dict.fromkeys(_LAYER_MODELS.values()))], Field(discriminator="type")]


class Init(Strict):
    weight: Literal["default", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "normal"] = "default"
    std: float | None = Field(default=None, gt=0)  # for weight: normal
    bias: Literal["default", "zeros"] = "default"

    @model_validator(mode="after")
    def _std_for_normal(self, info: ValidationInfo):
        if self.weight == "normal" and self.std is None:
            raise ValueError("init.weight 'normal' needs init.std (for example std: 0.3)")
        if self.weight != "normal":
            reject_unused(self, "model.init.", ["std"],
                          f"it is the std of weight: normal, and the weights are {self.weight}", info)
        return self


class Model(Strict):
    init: Init = Init()
    layers: list[Layer] = Field(min_length=1)

    @field_validator("layers", mode="before")
    @classmethod
    def _lowercase_types(cls, layers):
        # Accept PyTorch's spelling too ("Conv2d", "ReLU", "BatchNorm2d").
        if isinstance(layers, list):
            out = []
            for layer in layers:
                if isinstance(layer, dict) and isinstance(layer.get("type"), str):
                    layer = {**layer, "type": layer["type"].lower()}
                out.append(layer)
            return out
        return layers


# ----------------------------------------------------------------------------- data
class Augment(Strict):
    crop: int | None = Field(default=None, ge=1)  # random crop of this size in training, center crop at eval
    crop_padding: int = Field(default=0, ge=0)  # zero padding around the image before the random crop
    hflip: bool = False
    cutout: int | None = Field(default=None, ge=1)  # training: zero a square of this side in each image
    test_hflip: bool = False  # evaluation: average the logits of each image and of its mirror


class Data(Strict):
    dataset: Literal[R.DATASET_NAMES]
    root: str | None = None  # default: $MLP_CLI_DATA, else the per-user cache folder
    val_size: float = Field(default=0.1, ge=0)  # a count of training examples (>= 1) or a fraction (< 1)
    # For a quick try: a count (>= 1) or a fraction (< 1) of what val_size leaves; None: all of it.
    train_size: float | None = Field(default=None, gt=0)
    normalize: bool = True  # per-channel mean/std of the training split
    image_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None  # imagefolder: [H, W]
    channels: Literal[1, 3] | None = None  # imagefolder: 1 grayscale, 3 RGB (the default)
    augment: Augment = Augment()

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo):
        for key in ("val_size", "train_size"):
            size = getattr(self, key)
            if size is not None and size >= 1 and size != int(size):
                raise ValueError(f"data.{key} must be a whole count (>= 1) or a fraction below 1 (got {size:g})")
        # image_size may stay null for an image folder: the data layer takes the size its images share.
        dataset = R.dataset(self.dataset)
        if dataset.source != R.FOLDER:
            shape = dataset.shape
            given = (f"{self.dataset} gives {shape[0]} features per example" if len(shape) == 1 else
                     f"{self.dataset} images are {shape[1]}x{shape[2]} with {shape[0]} channel{'s' * (shape[0] > 1)}")
            reject_unused(self, "data.", ["image_size", "channels"], f"it is for imagefolder, and {given}", info)
        if dataset.source == R.GENERATED:
            reject_unused(self, "data.", ["root"], f"{self.dataset} is generated and reads no files", info)
        if not dataset.images:
            reject_unused(self.augment, "data.augment.", ["crop", "crop_padding", "hflip", "cutout", "test_hflip"],
                          f"augmentation is for images, and {self.dataset} gives {dataset.shape[0]} features "
                          "per example", info)
        return self

    def resolved_root(self) -> Path:
        return Path(self.root or os.environ.get("MLP_CLI_DATA") or default_data_dir()).expanduser()


# ----------------------------------------------------------------------------- train, optim
class Schedule(Strict):
    name: Literal["constant", "step", "exponential", "cosine"] = "constant"
    step_size: int = Field(default=10, ge=1)  # step: epochs between decays
    gamma: float = Field(default=0.1, gt=0, le=1)  # step and exponential: decay factor
    t_max: int | None = Field(default=None, ge=1)  # cosine: period in epochs (default: train.epochs)
    eta_min: float = Field(default=0.0, ge=0)  # cosine: final learning rate
    warmup_epochs: int = Field(default=0, ge=0)  # linear warm-up before the schedule
    warmup_start_factor: float = Field(default=0.1, gt=0, le=1)


class Optim(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    schedule: Schedule = Schedule()

    @model_validator(mode="after")
    def _nesterov(self, info: ValidationInfo):
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("optim.nesterov needs optim.name: sgd and a momentum above 0")
        if self.name == "sgd":
            reject_unused(self, "optim.", ["betas", "eps"], "it is for adam and adamw, and optim.name is sgd", info)
        else:
            reject_unused(self, "optim.", ["momentum"],
                          f"it is for sgd; {self.name} keeps its moments by optim.betas", info)
        s = self.schedule
        uses = {"constant": [], "step": ["step_size", "gamma"], "exponential": ["gamma"], "cosine": ["t_max", "eta_min"]}
        unused = [k for k in ("step_size", "gamma", "t_max", "eta_min") if k not in uses[s.name]]
        reject_unused(s, "optim.schedule.", unused, f"the {s.name} schedule uses "
                      + (", ".join(uses[s.name]) if uses[s.name] else "no parameter but warm-up"), info)
        if s.warmup_epochs == 0:
            reject_unused(s, "optim.schedule.", ["warmup_start_factor"], "there is no warm-up (warmup_epochs is 0)", info)
        return self


class EarlyStop(Strict):
    """Keras's EarlyStopping: stop after `patience` epochs in a row in which `monitor` did not
    improve on its best by more than `min_delta`."""

    monitor: Literal["val_loss", "val_acc"] = "val_loss"
    patience: int = Field(default=0, ge=0)
    min_delta: float = Field(default=0.0, ge=0)


class Train(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Decay of an exponential moving average of the weights and batch-norm statistics, updated every
    # step; when above 0 the average is what is validated, tested and saved as best.safetensors.
    ema: float = Field(default=0.0, ge=0, lt=1)
    plots: bool = True  # write curves.png, confusion.png, ... into the run directory
    tensorboard: bool = True  # write TensorBoard event files into RUN/tensorboard (events.py)
    early_stop: EarlyStop | None = None  # stop when the validation metric stops improving (null: never)


class Config(Strict):
    seed: int = Field(default=0, ge=0)
    data: Data
    model: Model
    train: Train
    optim: Optim

    @model_validator(mode="after")
    def _warmup_within_the_run(self, info: ValidationInfo):
        warmup, epochs = self.optim.schedule.warmup_epochs, self.train.epochs
        if warmup >= epochs and not recorded(info):
            raise ValueError(f"optim.schedule.warmup_epochs {warmup} is not shorter than the run (train.epochs "
                             f"{epochs}): the learning rate would never reach optim.lr; use fewer warm-up epochs "
                             f"(e.g. optim.schedule.warmup_epochs={max(1, epochs // 5) if epochs > 1 else 0}) or more epochs")
        if self.train.early_stop is not None and self.data.val_size == 0:
            raise ValueError(f"train.early_stop watches {self.train.early_stop.monitor}, but data.val_size is 0 "
                             "(no validation split); give a validation split (e.g. data.val_size=0.1) or "
                             "train.early_stop=null")
        return self

    def dump(self) -> dict:
        """The resolved config as plain YAML-able data (what config.yaml holds)."""
        return _plain(self.model_dump(mode="json"))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlp-cli" / "data"


def default_cache_dir() -> Path:
    """Writable folder for decoded image caches (never next to the data, which may be read-only)."""
    if os.environ.get("MLP_CLI_CACHE"):
        return Path(os.environ["MLP_CLI_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlp-cli" / "cache"


# ----------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    example = "pass a YAML config, e.g. --config configs/mnist_mlp.yaml"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: --config /dev/zero must not eat the memory
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_BYTES // 2**20} MiB, too large for a config; {example}")
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); {example}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing YAML file, e.g. --config configs/mnist_mlp.yaml") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}; fix the syntax of the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping with the sections seed, data, model, train, optim")
    return data


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply Hydra-style dotted overrides (`optim.lr=0.05`, `data.augment.hflip=true`), and
    Hydra's `~KEY` to remove a key the file sets (`~optim.momentum`, to switch to optim.name=adam).

    Values are parsed as YAML scalars or flow collections, so `[28, 28]`, `true` and `1e-3` work.
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        removes = item.startswith("~")
        key, sep, text = item.removeprefix("~").partition("=")
        key = key.strip()
        if (not sep and not removes) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: write KEY=VALUE with a dotted key, e.g. optim.lr=0.05 or "
                              "train.epochs=3, or ~KEY to remove a key the file sets")
        value = None
        if not removes:
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError:
                raise ConfigError(f"bad override {item!r}: the value {text!r} is not valid YAML; quote strings and use [a, b] for lists") from None
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts):
            where = ".".join(parts[:i]) or "the config"
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    what = "layers" if where == "model.layers" else "items"
                    raise ConfigError(f"bad override {item!r}: {where} is a list of {len(node)} {what}, so {part!r} "
                                      f"is not one of them; use an index from 0 to {len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"bad override {item!r}: {where} is the value {node!r}, not a section with keys")
            if i < len(parts) - 1:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
            elif not removes:
                node[part] = value
            elif isinstance(node, list):
                raise ConfigError(f"bad override {item!r}: ~ removes a key, not one item of a list; set the whole "
                                  f"list instead ({'.'.join(parts[:-1])}=[...])")
            elif part in node:
                del node[part]
            else:
                raise ConfigError(f"bad override {item!r}: {key} is not set in the config, so there is nothing to remove")
    return raw


def validate(raw: dict, source: str = "config", *, recorded: bool = False, overrides=(), label=None) -> Config:
    """The Config of `raw` (read from `source`) with the KEY=VALUE `overrides` applied, or ConfigError.

    Each error is blamed on what caused it: on the override, as typed, that set the key at fault
    ("invalid override train.epoch=3: unknown key 'train.epoch'; ..."), and on `source` ("invalid
    config: FILE: ...") when no override did; see `_blame` for the rules between keys.
    `label(item)` names an override in the message (default "override ITEM"; the sweep names a
    trial's values by the trial). recorded=True for a config that a run wrote (checkpoint
    metadata): the rules about keys that do not apply are not applied to it, since it was valid
    when it ran (older runs recorded data.channels: 3 for every data set, for example)."""
    given = apply_overrides(raw, overrides) if overrides else raw
    try:
        return Config.model_validate(given, context={"recorded": recorded})
    except ValidationError as e:
        problems = _problems(e, given)
    # What the file alone gets wrong, for the errors that an override may or may not explain.
    from_file = _texts(raw, recorded) if overrides else set()
    label = label or (lambda item: f"override {item}")
    lines = []
    for loc, text in problems:
        items = _blame(loc, text, raw, list(overrides), from_file, recorded)
        lines.append((_where([label(i) for i in items]) if items else f"config: {source}", text))
    unique = list(dict.fromkeys(lines))
    # Several errors often stem from one cause; one clear message is better than a wall.
    first, *more = unique
    also = "".join(f"\n  also: {where.removeprefix('config: ')}: {text}" for where, text in more[:3])
    raise ConfigError(f"invalid {first[0]}: {first[1]}{also}")


def _blame(loc: tuple[str, ...], text: str, raw: dict, overrides: list[str], from_file: set[str],
           recorded: bool) -> list[str]:
    """The overrides that an error at `loc` (with message `text`) is due to; [] for the file `raw`.

    1. An override that set `loc` or a section holding it (the most specific one) set the value at fault.
    2. Otherwise an error that the file alone has too is the file's.
    3. Otherwise a rule of the section at `loc` (or between sections, at the top) failed: it is due
       to the overrides inside that section without which the error goes away (train.epochs=3 for
       a warm-up of 5 epochs in the file), else, if each alone would do, to all of them."""
    keys = [(item, tuple(item.removeprefix("~").partition("=")[0].strip().split("."))) for item in overrides]
    setting = [(len(key), i, item) for i, (item, key) in enumerate(keys) if loc[:len(key)] == key]
    if setting:
        return [max(setting)[2]]
    if text in from_file:
        return []
    inside = [i for i, (_, key) in enumerate(keys) if key[:len(loc)] == loc]
    needed = [i for i in inside
              if text not in _texts(apply_overrides(raw, overrides[:i] + overrides[i + 1:]), recorded)]
    return [overrides[i] for i in needed or inside]


def _texts(raw: dict, recorded: bool) -> set[str]:
    """The messages of what is wrong with `raw` (none if it is valid)."""
    try:
        Config.model_validate(raw, context={"recorded": recorded})
    except ValidationError as e:
        return {text for _, text in _problems(e, raw)}
    return set()


def _where(labels: list[str]) -> str:
    labels = list(dict.fromkeys(labels))
    if len(labels) > 1 and all(label.startswith("override ") for label in labels):
        return "overrides " + " ".join(label.removeprefix("override ") for label in labels)
    return " and ".join(labels)


def load(path: str | Path, overrides=(), *, recorded: bool = False) -> Config:
    """Read, override and validate a config file (recorded: one a run wrote, see `validate`). Raises
    ConfigError, blaming the override or the file, whichever the error comes from."""
    return validate(read_yaml(path), str(path), recorded=recorded, overrides=overrides)


def key_for_option(option: str) -> str | None:
    """The dotted config key an unknown command-line option was probably meant for: --epochs ->
    train.epochs, --lr -> optim.lr, --batch-size -> train.batch_size (None if nothing is close)."""
    name = option.lstrip("-").replace("-", "_").lower()
    name = {"learning_rate": "lr"}.get(name, name)
    keys = {f"{prefix}.{field}".lstrip("."): field for prefix, model in _MODELS.items() for field in model.model_fields
            if not isinstance(getattr(model.model_fields[field].annotation, "model_fields", None), dict)}
    exact = [key for key, field in keys.items() if field == name]
    if exact:
        return exact[0]
    close = difflib.get_close_matches(name, list(keys.values()), n=1, cutoff=0.75)
    return next(key for key, field in keys.items() if field == close[0]) if close else None


# ----------------------------------------------------------------------------- error messages
_MODELS = {
    "": Config, "data": Data, "data.augment": Augment, "model": Model, "model.init": Init,
    "train": Train, "optim": Optim, "optim.schedule": Schedule,
}
def _dotted(loc) -> str:
    return ".".join(str(p) for p in loc)


def _get(raw, loc):
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
    return node


def _layer_loc(loc):
    """Drop pydantic's union tag from a location inside model.layers: (model, layers, 0, conv2d, x) -> ..."""
    loc = list(loc)
    if len(loc) >= 4 and loc[0] == "model" and loc[1] == "layers" and isinstance(loc[2], int) and loc[3] in _LAYER_MODELS:
        del loc[3]
    return tuple(loc)


def _problems(err: ValidationError, raw: dict) -> list[tuple[tuple[str, ...], str]]:
    """(location, message) of each error: the dotted location of the key at fault, as strings, and
    one sentence naming the key, what was wrong and what is allowed (without the file's name)."""
    out = []
    for item in err.errors():
        loc = _layer_loc(item["loc"])
        key = _dotted(loc) or "(top level)"
        kind = item["type"]
        size = next((i for i, p in enumerate(loc) if str(p).startswith(("constrained-int", "tuple["))), None)
        if size is not None:  # an int-or-pair field: one message for both branches of the union
            key, low, loc = _dotted(loc[:size]), 0 if loc[size - 1] == "padding" else 1, loc[:size]
            text = f"{key}: expected an integer >= {low} or a pair [h, w] of them (got {_get(raw, loc)!r})"
        elif kind == "extra_forbidden":
            parent, name = loc[:-1], str(loc[-1])
            allowed = _allowed_keys(parent, raw)
            hint = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
            tip = f"did you mean '{_dotted(parent + (hint[0],))}'?" if hint else f"allowed keys: {', '.join(allowed)}"
            layer = _layer_name(parent, raw)
            text = f"unknown key '{key}'; " + (f"{layer}: {tip}" if layer else tip)
        elif kind == "missing":
            layer = _layer_name(loc[:-1], raw)
            text = f"missing required key '{key}'" + (f" ({layer})" if layer else "")
        elif kind == "union_tag_invalid":
            bad = _get(raw, loc + ("type",)) if loc else None
            hint = difflib.get_close_matches(str(bad).lower(), LAYER_TYPES, n=1, cutoff=0.5)
            tip = f"did you mean '{hint[0]}'? " if hint else ""
            text = f"{key}.type: unknown layer type {bad!r}; {tip}allowed: {', '.join(LAYER_TYPES)}"
        elif kind == "union_tag_not_found":
            text = f"{key}: a layer needs a 'type' (one of {', '.join(LAYER_TYPES)})"
        elif kind in ("literal_error", "enum"):
            value = _get(raw, loc)
            expected = item.get("ctx", {}).get("expected", "")
            hint = difflib.get_close_matches(str(value), [s.strip("'") for s in expected.replace(" or ", ", ").split(", ")], n=1, cutoff=0.5)
            tip = f" (did you mean {hint[0]!r}?)" if hint else ""
            text = f"{key}: {value!r} is not allowed{tip}; allowed values: {expected}"
        elif item["msg"].startswith("Value error, "):  # a rule of ours: its message says everything
            text = item["msg"][len("Value error, "):]
        else:
            value = _get(raw, loc)
            msg = item["msg"]
            shown = "" if value is None and kind != "none_required" else f" (got {value!r})"
            text = f"{key}: {msg[0].lower() + msg[1:]}{shown}"
        out.append((tuple(str(p) for p in loc), text))
    return out


def _layer_name(loc: tuple, raw: dict) -> str | None:
    """'model.layers.0 is a flatten layer' for the location of a layer, else None."""
    if len(loc) == 3 and loc[0] == "model" and loc[1] == "layers":
        layer = _get(raw, loc)
        kind = layer.get("type") if isinstance(layer, dict) else None
        if isinstance(kind, str) and kind.lower() in _LAYER_MODELS:
            return f"{_dotted(loc)} is a{'n' * (kind[0].lower() in 'aeiou')} {kind.lower()} layer"
    return None


def _allowed_keys(parent: tuple, raw: dict) -> list[str]:
    if len(parent) == 3 and parent[0] == "model" and parent[1] == "layers":
        layer = _get(raw, parent) or {}
        model = _LAYER_MODELS.get(str(layer.get("type", "")).lower())
        return [k for k in model.model_fields] if model else ["type"]
    model = _MODELS.get(_dotted(parent))
    return list(model.model_fields) if model else []
