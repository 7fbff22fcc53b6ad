"""The `mlp-cli` command line. Commands only: parse, call one library function, print.

Heavy modules (numpy, torch, matplotlib) are imported inside the commands, so that
`mlp-cli --help` and `mlp-cli convshape` answer at once.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from mlp_cli import __version__
from mlp_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_TERMINATED, EXIT_USAGE  # noqa: F401


def fail(message: str, code: int) -> None:
    """Print one clear message on stderr and exit with `code` (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Output:
    """stdout or stderr that a closed pipe (`mlp-cli train ... | head -2`) or a full disk cannot kill.

    The first failed write points the file descriptor at /dev/null and drops the rest, so the command
    goes on (a long training run finishes and saves its checkpoints) and Python's own flush at exit
    stays quiet. A closed pipe is the reader's choice and changes nothing else; any other failure is
    kept in `lost`, and the command then exits 1 saying that its output was lost.
    """

    def __init__(self, stream):
        self.stream, self.dead, self.lost = stream, stream is None, None

    def write(self, text):
        if not self.dead:
            try:
                return self.stream.write(text)
            except OSError as e:
                self._drop(e)
        return len(text)

    def flush(self):
        if not self.dead:
            try:
                self.stream.flush()
            except OSError as e:
                self._drop(e)

    def isatty(self):
        return not self.dead and self.stream.isatty()

    def _drop(self, error: OSError) -> None:
        self.dead = True
        if not isinstance(error, BrokenPipeError):
            self.lost = error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (tests): dropping is enough
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _guard_output() -> list[_Output]:
    for name in ("stdout", "stderr"):
        if not isinstance(getattr(sys, name), _Output):
            setattr(sys, name, _Output(getattr(sys, name)))
    return [sys.stdout, sys.stderr]


def handle_errors(command):
    """Turn the project's exceptions into one line on stderr and the documented exit code.

    Errors nobody foresaw get one line too: an OSError names its file (exit 1), a MemoryError says
    how much was asked for (exit 1), anything else says it was unexpected (exit 1).
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from mlp_cli.errors import Interrupted, RuntimeFailure, Terminated, UsageError, signals_raise

        streams = _guard_output()
        try:
            with signals_raise():  # Ctrl-C and SIGTERM: exceptions for the command to handle
                result = command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors and exits
        except UsageError as e:
            fail(str(e), EXIT_USAGE)
        except Interrupted as e:
            fail(str(e), e.code)
        except RuntimeFailure as e:
            fail(str(e), EXIT_RUNTIME)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except Terminated:
            fail("interrupted by SIGTERM", EXIT_TERMINATED)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}", EXIT_RUNTIME)
        except MemoryError as e:
            fail(f"out of memory: {str(e) or 'an allocation failed'}; use a smaller network, batch or image size",
                 EXIT_RUNTIME)
        except Exception as e:  # noqa: BLE001  the last resort: still one line, and honest about it
            fail(f"unexpected {type(e).__name__}: {e} (if the input does not explain it, it is a bug in mlp-cli: "
                 "please report it with the command line)", EXIT_RUNTIME)
        lost = next((s.lost for s in streams if s.lost), None)
        if lost is not None:
            fail(f"the output could not be written ({lost.strerror or lost})", EXIT_RUNTIME)
        return result

    return wrapper


class OverridesCommand(click.Command):
    """A command that takes KEY=VALUE config overrides: an unknown option that names a config key
    (`--epochs 3`) is answered with the override to write instead (`train.epochs=3`)."""

    def parse_args(self, ctx, args):
        given = list(args)  # click's parser consumes `args`
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            from mlp_cli.config import key_for_option

            key = key_for_option(e.option_name)
            if key is None:
                raise
            value = "VALUE"
            for i, arg in enumerate(given):
                if arg.startswith(e.option_name + "="):
                    value = arg.split("=", 1)[1]
                elif arg == e.option_name and i + 1 < len(given) and not given[i + 1].startswith("-"):
                    value = given[i + 1]
            raise click.NoSuchOption(e.option_name, ctx=ctx, message=(
                f"No such option: {e.option_name}. Config keys are set as KEY=VALUE overrides: {key}={value}")) from None


class _Program(click.Group):
    """The `mlp-cli` process: once torch has been loaded (the data layer's torchvision), leave
    without the interpreter's exit handlers. libtorch_cuda's take 3-5 s here, which a user would
    wait through after every command, and which would keep a SIGTERM'd run alive past the
    grace period of Docker or Slurm. Everything we write is fsynced and closed by then."""

    def main(self, *args, **kwargs):
        _guard_output()  # before click prints anything: usage errors and --help too
        return super().main(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        try:
            return self.main(*args, **kwargs)
        except SystemExit as e:
            if "torch" not in sys.modules:
                raise
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            try:
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):
                pass
            sys.stderr.flush()
            os._exit(code)


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlp-cli")
def main():
    """Train and evaluate neural networks written from scratch in NumPy.

    \b
    mlp-cli train --config configs/mnist_mlp.yaml      train a config
    mlp-cli eval --checkpoint runs/x/best.safetensors  evaluate a checkpoint
    mlp-cli convshape --input 28x28x1 --kernel 5       conv arithmetic
    """


def _default_run_dir(config_path: str):
    import time
    from pathlib import Path

    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _pitfall_warnings(cfg) -> None:
    """Settings the practical found to fail quietly: say so before the time is spent."""
    if cfg.optim.name == "sgd" and cfg.optim.momentum >= 0.9 and cfg.optim.lr >= 0.1:
        _warn(f"momentum {cfg.optim.momentum} with lr {cfg.optim.lr} tends to stall or diverge; "
              "with momentum 0.9 use a learning rate about 10 times smaller (e.g. optim.lr=0.01)")


@main.command(cls=OverridesCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The run's YAML config (see configs/).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), metavar="RUN_DIR",
              help="Continue the run in RUN_DIR from its last checkpoint, with its saved config.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Run directory to create: a new or empty folder  [default: runs/<config name>-<date>-<time>].")
@click.option("--from-epoch", type=click.IntRange(min=0), metavar="K",
              help="With --resume: continue from the kept state of epoch K (after a file was damaged).")
@click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast", show_default=True,
              help="fast: the optimized engine; reference: the plain NumPy derivation (nn/reference.py), slow.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@handle_errors
def train(config_path, resume_dir, out, from_epoch, quiet, engine, overrides):
    """Train a network: mlp-cli train --config FILE [KEY=VALUE ...].

    \b
    Overrides are dotted keys of the config, as in Hydra:
      mlp-cli train --config configs/mnist_mlp.yaml train.epochs=3 optim.lr=0.05
      mlp-cli train --resume runs/mnist_mlp-20261127-101500 train.epochs=30

    \b
    The run directory receives config.yaml, metrics.csv, last.safetensors,
    best.safetensors (best validation accuracy) and test_metrics.json. Every
    finished epoch is committed at once: after a crash or kill, --resume goes on
    from the last one. On --resume, overrides of seed, data.* and model.* are
    refused; the others hold from the next epoch (recorded in history.yaml).
    --engine and the MLP_CLI_THREADS threads are settings of each invocation
    (also recorded there); the threads change the speed, never the results.
    Exit codes: 0 done, 2 invalid config or run directory in use, 1 runtime
    failure, 130 Ctrl-C, 143 SIGTERM (both after saving the finished epochs).
    """
    import shlex

    from mlp_cli import config
    from mlp_cli import train as training
    from mlp_cli.nn.execution import Execution

    if bool(config_path) == bool(resume_dir):
        fail("give either --config FILE (a new run) or --resume RUN_DIR (continue a run)", EXIT_USAGE)
    if from_epoch is not None and not resume_dir:
        fail("--from-epoch goes with --resume RUN_DIR", EXIT_USAGE)
    execution = Execution.from_env(engine=engine)
    console = training.Console(quiet=quiet)
    if resume_dir:
        if out:
            fail("--out does not apply to --resume: the run continues in its own directory", EXIT_USAGE)
        command = ["--resume", resume_dir] + (["--from-epoch", str(from_epoch)] if from_epoch is not None else [])
        command += ["--engine", engine] if engine != "fast" else []
        result = training.fit(None, resume_dir, resume=True, overrides=overrides, from_epoch=from_epoch,
                              console=console, command=shlex.join(["mlp-cli", "train", *command, *overrides]),
                              execution=execution)
    else:
        cfg = config.load(config_path, overrides)
        _pitfall_warnings(cfg)
        run_dir = out if out else _default_run_dir(config_path)
        command = ["--config", config_path, "--out", str(run_dir), *(["--engine", engine] if engine != "fast" else []),
                   *overrides]
        result = training.fit(cfg, run_dir, console=console, command=shlex.join(["mlp-cli", "train", *command]),
                              execution=execution)
    if result.best_val_acc is None:
        best = f"no validation split, best.safetensors is epoch {result.best_epoch}"
    else:
        best = f"best validation accuracy {100 * result.best_val_acc:.2f}% at epoch {result.best_epoch}"
    test = "" if result.test is None else f", test accuracy {100 * result.test['accuracy']:.2f}%"
    epochs = f"{result.epochs} epoch{'s' * (result.epochs != 1)}"
    stopped = "" if result.early_stop is None else " (stopped early)"
    click.echo(f"done: {epochs}{stopped}, {best}{test}; run saved in {result.run_dir}")


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The YAML config every trial starts from.")
@click.option("--sweep", "sweep_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A sweep YAML: params (lists or distributions), search (grid|random), trials, seed, metric.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Sweep folder to create  [default: sweeps/<config name>-<date>-<time>].")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Continue the sweep in DIR: finished trials are kept, interrupted ones resume.")
@click.option("--address", metavar="auto|HOST:PORT",
              help="Run on an existing Ray cluster (`ray start --head`)  [default: a local Ray instance].")
@click.option("--early-stop", is_flag=True, help="Let ASHA stop the trials that trail the others.")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own logs and tables.")
@click.argument("overrides", nargs=-1, metavar="[KEY=V1,V2,... | KEY=VALUE]...")
@handle_errors
def sweep(config_path, sweep_file, out, resume_dir, address, early_stop, verbose, overrides):
    """Train one config many times with some keys varied, in parallel, on Ray Tune.

    \b
      mlp-cli sweep --config configs/mnist_mlp.yaml optim.lr=0.01,0.05,0.2 train.batch_size=64,256
      mlp-cli sweep --config configs/mnist_mlp.yaml --sweep lr.yaml --early-stop
      mlp-cli sweep --resume sweeps/mnist_mlp-20261127-101500

    \b
    A comma list is a grid axis; KEY=VALUE applies to every trial. Every trial is an
    mlp-cli train run in DIR/<short name from its values>/, with MLP_CLI_THREADS threads
    (default 1) on as many CPUs. DIR also gets sweep.yaml, results.csv (one row per trial)
    and sweep.png. Exit codes: 0 done (trials may have failed), 2 invalid config or sweep
    (nothing written), 1 runtime failure (no Ray, unreachable cluster, every trial failed),
    130 Ctrl-C and 143 SIGTERM (continue with --resume).
    """
    from pathlib import Path

    from mlp_cli import sweep as sw

    if bool(config_path) == bool(resume_dir):
        fail("give either --config FILE (a new sweep) or --resume DIR (continue a sweep)", EXIT_USAGE)
    if resume_dir:
        extra = [opt for opt, given in (("--sweep", sweep_file), ("--out", out), ("--early-stop", early_stop),
                                         ("KEY=VALUE arguments", overrides)) if given]
        if extra:
            fail(f"{extra[0]} does not apply to --resume: the sweep continues as sweep.yaml in {resume_dir} says",
                 EXIT_USAGE)
        out = Path(resume_dir)
        plan = sw.read_plan(out)
    else:
        out = Path(out) if out else Path("sweeps") / _default_run_dir(config_path).name
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            hint = f"continue it with --resume {out}" if (out / sw.SWEEP_FILE).exists() else "choose another --out"
            fail(f"{out} already exists and is not empty; {hint}", EXIT_USAGE)
        plan = sw.make_plan(config_path, overrides, sweep_file, early_stop=early_stop)
    rows = sw.run(plan, out, resume=bool(resume_dir), address=address, verbose=verbose)
    click.echo(sw.summary(plan, out, rows))
    if not any(r["status"] in ("done", "stopped") for r in rows.values()):
        fail(f"no trial finished; see the message column of {out / sw.RESULTS_FILE}", EXIT_RUNTIME)


@main.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="A .safetensors checkpoint written by mlp-cli train.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
              help="Which split to evaluate on.")
@click.option("--data-root", metavar="DIR", help="Where the data lives, if not where the run found it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (accuracy, loss, n, per_class_accuracy, "
              "confusion_matrix).")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast", show_default=True,
              help="fast: the optimized engine; reference: the plain NumPy derivation (nn/reference.py), slow.")
@handle_errors
def eval_(checkpoint_path, split, data_root, as_json, engine):
    """Evaluate a checkpoint: loss, accuracy, per-class accuracy, confusion matrix."""
    import json

    from mlp_cli.evaluate import evaluate_checkpoint, format_report
    from mlp_cli.nn.execution import Execution

    execution = Execution.from_env(engine=engine)
    if split == "train":
        _warn("evaluating on the training split measures how well the net fits, not how well it generalizes")
    result = evaluate_checkpoint(checkpoint_path, split, data_root=data_root, execution=execution)
    click.echo(json.dumps(result) if as_json else format_report(result))


@main.command(cls=OverridesCommand)
@click.option("--input", "input_", metavar="HxWxC", help="One layer: the input size, e.g. 28x28x1 (HxW means one channel).")
@click.option("--kernel", metavar="K", help="One layer: kernel size K (or KHxKW).")
@click.option("--stride", metavar="S", help="Stride (default 1 for conv, the kernel size for --pool).")
@click.option("--padding", metavar="P", default="0", show_default=True, help="Zero padding on each side.")
@click.option("--dilation", metavar="D", default="1", show_default=True, help="Kernel dilation.")
@click.option("--filters", type=click.IntRange(min=1), metavar="F", help="Number of filters (output channels) of the conv layer (default 1).")
@click.option("--ceil-mode", is_flag=True, help="With --pool: round the output size up, as PyTorch's ceil_mode=True.")
@click.option("--pool", type=click.Choice(["max", "avg"]), is_flag=False, flag_value="max", default=None,
              help="A pooling layer instead of a conv layer (--pool alone means max).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Network mode: every layer of this config's model.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N", help="Network mode: batch size for the activation memory (default: train.batch_size).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), help="Output format (default: table).")
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@handle_errors
def convshape(input_, kernel, stride, padding, dilation, filters, ceil_mode, pool, config_path, batch_size, fmt,
              as_json, overrides):
    """Output sizes, weights and receptive fields of conv and pooling layers, as PyTorch computes them.

    \b
    One layer:  mlp-cli convshape --input 28x28x1 --kernel 5 --stride 2 [--filters 6]
                mlp-cli convshape --input 7x7x64 --kernel 2 --pool max --ceil-mode
    A network:  mlp-cli convshape --config configs/cifar10_cnn.yaml [--json] [KEY=VALUE ...]

    Exits with code 2 when the shapes do not fit (the same check `train` runs before loading data).
    """
    from mlp_cli import convshape as cs
    from mlp_cli import shapes

    if as_json and fmt not in (None, "json"):
        fail(f"--json and --format {fmt} contradict each other; pass one of them", EXIT_USAGE)
    fmt = "json" if as_json else (fmt or "table")
    ctx = click.get_current_context()
    given = lambda name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE  # noqa: E731
    layer_opts = ["input_", "kernel", "stride", "padding", "dilation", "filters", "ceil_mode", "pool"]

    if config_path is not None:
        used = [f"--{n.rstrip('_').replace('_', '-')}" for n in layer_opts if given(n)]
        if used:
            verb = "belongs" if len(used) == 1 else "belong"
            fail(f"--config describes a whole network; {', '.join(used)} {verb} to one-layer mode (--input ... --kernel ...)", EXIT_USAGE)
        from mlp_cli import registry
        from mlp_cli.config import load

        cfg = load(config_path, overrides)
        if registry.dataset(cfg.data.dataset).shape is None and cfg.data.image_size is None:  # an image folder
            from mlp_cli.data import resolve_config  # the size its images share (numpy, only here)

            cfg = resolve_config(cfg)
        input_shape = shapes.dataset_input_shape(cfg.data)
        infos = shapes.resolve(input_shape, [layer.model_dump() for layer in cfg.model.layers])
        report = cs.network_report(input_shape, infos, batch_size or cfg.train.batch_size,
                                   source=str(config_path), dataset=cfg.data.dataset)
        render = {"table": cs.network_table, "json": cs.to_json, "csv": cs.network_csv}[fmt]
        click.echo(render(report))
        return

    if input_ is None:
        fail("pass --input HxWxC --kernel K for one layer, or --config FILE for a network", EXIT_USAGE)
    if overrides:
        fail(f"unexpected argument {overrides[0]!r}: KEY=VALUE overrides go with --config", EXIT_USAGE)
    if given("batch_size"):
        fail("--batch-size goes with --config (activation memory of a network)", EXIT_USAGE)
    if kernel is None:
        fail("--kernel K is required with --input, e.g. --input 28x28x1 --kernel 5", EXIT_USAGE)
    try:
        h, w, c = cs.parse_input(input_)
        k = cs.parse_size(kernel, "--kernel", 1)
        s = cs.parse_size(stride, "--stride", 1) if stride is not None else None
        p = cs.parse_size(padding, "--padding", 0)
        d = cs.parse_size(dilation, "--dilation", 1)
    except ValueError as e:
        fail(str(e), EXIT_USAGE)
    report = cs.layer_report(h, w, c, k, s, p, d, filters=filters, ceil_mode=ceil_mode, pool=pool)
    render = {"table": cs.layer_text, "json": cs.to_json, "csv": cs.layer_csv}[fmt]
    click.echo(render(report))


# ----------------------------------------------------------------------------- report, gradcheck, predict
@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--plot", "plot_path", metavar="FILE.png",
              help="Also write a picture overlaying the runs' validation accuracy curves (.png, .pdf, .svg, ...).")
@handle_errors
def report(run_dirs, fmt, plot_path):
    """Compare runs: config differences, best validation accuracy, test accuracy, time per epoch.

    \b
    One row per RUN_DIR (a folder written by mlp-cli train); a sweep folder
    (mlp-cli sweep) stands for the runs of its trials:
      mlp-cli report runs/cifar10_cnn-* runs/cifar10_cnn_improved-*
      mlp-cli report runs/* --format markdown --plot ladder.png
      mlp-cli report sweeps/mnist_mlp-20261127-101500 --plot lr.png

    \b
    "config differences" lists, as key=value, the dotted config keys whose values are not
    the same in every run. Accuracies: best validation accuracy and its epoch (metrics.csv),
    test accuracy of best.safetensors (test_metrics.json, "-" if absent); s/epoch is the
    median wall time of an epoch's training loop. A folder that is not a run is skipped with a
    warning; exit code 2 if none is a run, or if --plot names a file that cannot be written (checked
    first; its extension says the format: .png, .pdf, .svg, .jpg, ...).
    """
    from mlp_cli import report as rep

    if plot_path:
        from mlp_cli.pictures import check_picture_path

        check_picture_path(plot_path, "--plot")
    runs, skipped = rep.load_runs(run_dirs)
    for message in skipped:
        _warn(f"skipped {message}")
    click.echo(rep.FORMATS[fmt](runs))
    sys.stdout.flush()  # the table before the note on stderr, also when both go to one pipe
    if plot_path:
        written = rep.plot_validation(runs, plot_path)
        click.echo(f"validation curves of {len(runs)} run{'s' * (len(runs) != 1)} written to {written}", err=True)


@main.command(cls=OverridesCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The config whose network to check.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Random examples in the batch.")
@click.option("--samples", type=click.IntRange(min=1), default=12, show_default=True,
              help="Random entries checked per tensor.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="Largest relative error that passes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the inputs, labels, sampled entries and dropout masks.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast", show_default=True,
              help="fast: the optimized engine; reference: the plain NumPy derivation (nn/reference.py), slow.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@handle_errors
def gradcheck(config_path, batch, samples, threshold, seed, as_json, engine, overrides):
    """Check every layer's backward against central finite differences, in float64.

    \b
    mlp-cli gradcheck --config configs/cifar10_cnn_improved.yaml
    mlp-cli gradcheck --config my_net.yaml --samples 50 --batch 4

    Builds the config's network (its init and seed) in float64 and training mode (batch
    statistics, a fixed dropout mask), runs random inputs of the config's input shape with
    random labels through the loss, and compares the analytic gradient of every parameter
    and of every layer's input with central differences (h = 1e-6) at --samples random
    entries and along one random direction over the whole tensor (entries whose step
    would cross a ReLU or max-pool kink are redrawn).
    Exit code 0 when every relative error is at most --threshold, 1 otherwise
    (naming the layer whose backward is the likely culprit), 2 for an invalid config.
    """
    import json
    import math

    from mlp_cli import config
    from mlp_cli import gradcheck as gc
    from mlp_cli.nn.execution import Execution

    execution = Execution.from_env(engine=engine)
    if math.isnan(threshold):  # click's range check lets nan through, and every error would then "fail"
        fail("--threshold nan is not a number; pass a relative error such as 1e-6", EXIT_USAGE)
    cfg = config.load(config_path, overrides)
    result = gc.check_config(cfg, batch=batch, samples=samples, seed=seed, threshold=threshold, source=str(config_path),
                             execution=execution)
    click.echo(json.dumps(gc.config_check_json(result), indent=2) if as_json else gc.format_config_check(result))
    if not result.ok:
        fail(result.summary(), EXIT_RUNTIME)


# Every check runs the reference engine in float64, two passes per sampled element: a batch of 64
# takes about 11 s on cifar10_cnn_improved (16: 3.5 s); more examples check nothing new.
EXPLAIN_MAX_BATCH = 64


@main.command(cls=OverridesCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The config whose network to derive.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True,
              help="text for the terminal, markdown (LaTeX) for GitHub and Jupyter, json.")
@click.option("--batch", type=click.IntRange(min=1, max=EXPLAIN_MAX_BATCH), default=2, show_default=True,
              help=f"Random examples in the batch of the numerical checks (at most {EXPLAIN_MAX_BATCH}).")
@click.option("--seed", type=int, default=None,
              help="Seed of the checks' random examples and parameters (default: the config's seed).")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@handle_errors
def explain(config_path, fmt, batch, seed, overrides):
    """The practical's derivation for the config's network, each gradient checked numerically.

    \b
    mlp-cli explain --config configs/mnist_mlp.yaml
    mlp-cli explain --config configs/cifar10_cnn_improved.yaml --format markdown > derivation.md

    Layer by layer: the forward equation with the config's shapes, the output-size formula of
    conv and pooling layers, the gradients of the mean loss with respect to the layer's input and
    parameters, and the softmax cross-entropy loss. Each gradient is evaluated by the reference
    engine in float64 on --batch random examples and compared with central differences; exit
    code 1 when a relative error is above 1e-6, 2 for an invalid config. Reads no data.
    """
    from mlp_cli import config, registry
    from mlp_cli import explain as ex

    cfg = config.load(config_path, overrides)
    if cfg.data.dataset == registry.IMAGEFOLDER.name and cfg.data.image_size is None:
        from mlp_cli.data import resolve_config  # the size its images share, as convshape finds it

        cfg = resolve_config(cfg)
    result = ex.explain_config(cfg, batch=batch, seed=cfg.seed if seed is None else seed)
    click.echo(ex.FORMATS[fmt](result))
    bad = ex.failures(result)
    if bad:
        where, eq = bad[0]
        fail(f"{len(bad)} of the backward equations disagree{'s' * (len(bad) == 1)} with central differences; the first: "
             f"{eq['name']} in {where} (relative error {eq['rel_error']:.1e} > {ex.THRESHOLD:g})", EXIT_RUNTIME)


# ----------------------------------------------------------------------------- lr-find
def _number(text: str, option: str, kind=float):
    """A number from an option's text (a float: finite and above 0); UsageError in one line otherwise."""
    import math

    from mlp_cli.errors import UsageError

    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if kind is float and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} {text} must be a finite number above 0 (a learning rate)")
    return value


@main.command("lr-find", cls=OverridesCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The config whose network, data, optimizer and batch size to test.")
@click.option("--start", default="1e-6", show_default=True, metavar="LR", help="Learning rate of the first batch.")
@click.option("--end", default="10", show_default=True, metavar="LR", help="Learning rate of the last batch.")
@click.option("--steps", default="100", show_default=True, metavar="N",
              help="Batches of the ramp (at least 2; more than an epoch's go on into the next epochs).")
@click.option("--rule", type=click.Choice(["steep", "valley"]), default="steep", show_default=True,
              help="Which of fastai's rules gives the suggestion (the other is printed beside it).")
@click.option("--plot", "plot_path", metavar="FILE.png",
              help="Write the loss against the rate there, suggestion marked (.png, .pdf, .svg, ...)  "
                   "[default: no picture].")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object: {"rule", "suggestion", "suggestions" (per rule), "lrs", "losses" '
                   '(smoothed), "raw_losses", "stopped", "batches", "steps"}.')
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@handle_errors
def lr_find(config_path, start, end, steps, rule, plot_path, as_json, overrides):
    """Find a learning rate: fastai's range test on the config's network.

    \b
      mlp-cli lr-find --config configs/mnist_mlp.yaml --plot lr.png
      mlp-cli lr-find --config configs/mnist_lenet5.yaml --steps 50 data.root=/data --json

    \b
    A mock training from the config's initial weights (seed), with its optimizer, batch size,
    augmentation and label smoothing, whose learning rate grows exponentially from --start
    (first batch) to --end (last batch), one rate per batch. The loss is smoothed as fastai
    does (moving average, beta 0.98, debiased), and the test stops when the smoothed loss
    passes 4 times its lowest value or a loss is not finite. The suggestion is fastai's
    steep rule: where the smoothed loss falls fastest against log lr; --rule valley takes
    fastai's default, the middle of the longest stretch over which it keeps falling, which
    is a decade more cautious on the shipped nets (both are printed; the first steps/10 and
    last 5 batches are left out, as in fastai). Pass the suggestion as optim.lr to train.
    Nothing is written but the --plot picture: no run directory, no checkpoint.
    Exit codes: 0 done, 2 bad option or invalid config (nothing written), 1 missing
    data or too few batches for a suggestion, 130 Ctrl-C, 143 SIGTERM.
    """
    import json

    from mlp_cli import config
    from mlp_cli import lr_find as lf
    from mlp_cli.errors import RuntimeFailure, UsageError

    start, end, steps = _number(start, "--start"), _number(end, "--end"), _number(steps, "--steps", int)
    if start >= end:
        raise UsageError(f"--start {start:g} must be below --end {end:g}: the rate grows from one to the other")
    if steps < 2:
        raise UsageError(f"--steps {steps} is too few: the ramp needs at least 2 batches (fastai takes 100)")
    cfg = config.load(config_path, overrides)
    if plot_path:
        from mlp_cli.pictures import check_picture_path

        check_picture_path(plot_path, "--plot")
    result = _lr_find_with_bar(lf, cfg, start, end, steps, rule)
    if as_json:
        click.echo(json.dumps(lf.as_json(result)))
    else:
        click.echo(lf.summary(result))
        if result.suggestion is not None:
            click.echo(lf.suggestion_line(result) + f"; the config has optim.lr {cfg.optim.lr:g}")
    sys.stdout.flush()  # the numbers before the notes on stderr, also when both go to one pipe
    if plot_path:
        from pathlib import Path

        written = lf.draw(result, plot_path, title=f"lr-find: {Path(config_path).name}")
        click.echo(f"plot written to {written}", err=True)
    if result.suggestion is None:
        raise RuntimeFailure(f"{lf.summary(result)}: too few batches for a suggestion (fastai leaves out the first "
                             f"{steps // 10} and the last {lf.TRIM_END}); lower --start or raise --steps")


def _lr_find_with_bar(lf, cfg, start, end, steps, rule):
    """The range test, with a progress bar on a terminal."""
    from mlp_cli.console import Console

    with Console().counter(steps, "lr-find", "batch", leave=False) as bar:
        def on_batch(_k, lr, loss):
            bar.update()
            bar.set_postfix(lr=f"{lr:.3g}", loss=f"{loss:.4f}", refresh=False)

        return lf.find_lr(cfg, start=start, end=end, steps=steps, rule=rule, on_batch=on_batch)


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="A .safetensors checkpoint of an image model, written by mlp-cli train.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the most probable classes to list.")
@click.option("--json", "as_json", is_flag=True, help='Print a JSON list of {"image", "class", "index", "top_k"}.')
@handle_errors
def predict(checkpoint_path, images, top_k, as_json):
    """Classify image files: the predicted class and the top-k probabilities.

    \b
    mlp-cli predict --checkpoint runs/mnist_lenet5-x/best.safetensors digit.png
    mlp-cli predict --checkpoint runs/cifar10_cnn-x/best.safetensors *.jpg --top-k 5 --json

    Each image is converted to grayscale or RGB as the network expects, resized (bilinear)
    to its training image size (then center-cropped if the run trained on crops) and
    normalized with the checkpoint's mean and std, as evaluation does (which also averages over
    the mirror image when the run set data.augment.test_hflip).
    An unreadable image gets one line on stderr and the others are still predicted; the exit code
    is then 1 (also for an unreadable checkpoint), 2 for a checkpoint that does not take images.
    """
    import json

    from mlp_cli import predict as pr
    from mlp_cli.nn.execution import Execution

    results, errors = pr.predict_files(checkpoint_path, list(images), top_k=top_k, execution=Execution.from_env())
    if results or as_json:
        click.echo(json.dumps(results, indent=2) if as_json else pr.format_predictions(results))
    if errors:
        sys.stdout.flush()  # the predictions before the errors, also when both go to one pipe
        for message in errors[:-1]:
            click.echo(f"error: {message}", err=True)
        fail(errors[-1] if len(errors) == 1 else f"{errors[-1]} ({len(errors)} of {len(images)} images unreadable)",
             EXIT_RUNTIME)


if __name__ == "__main__":
    main()
