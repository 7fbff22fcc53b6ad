"""Running a sweep's trials on Ray Tune, and what the driver shows meanwhile.

Tune schedules the trials (as many at a time as the CPUs allow, each asking for its thread
count in CPUs), restarts a trial whose worker process died, and with --early-stop lets ASHA
stop the trials that trail. A trial is exactly `train.fit` into DIR/<trial name>/ (run_trial),
so Tune gets no checkpoints, and its own experiment state (pickles) lives in a temporary folder
that is deleted. Ray is imported only here, inside the functions that run trials.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from mlp_cli.console import Console, StopSignals
from mlp_cli.errors import EXIT_TERMINATED, Interrupted, RuntimeFailure, UsageError, signal_exit
from mlp_cli.sweep.folder import draw, read_statuses, result_row, write_hparams_config, write_plan, write_results
from mlp_cli.sweep.plan import METRICS, Plan, Trial, trial_configs, trial_hparams, trial_threads

FINAL = ("done", "stopped", "failed")  # --resume does not run these again
MAX_FAILURES = 2  # restarts of a trial whose worker process died (not of a trial that failed)
INSTALL_HINT = "mlp-cli sweep runs on Ray Tune, which is not installed; install it with: pip install 'mlp-cli[sweep]'"


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

    cfg = configs[name]  # validated in the driver

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


def _counts(statuses: dict[str, str]) -> str:
    values = list(statuses.values())
    return ", ".join(f"{s} {values.count(s)}" for s in ("done", "running", "stopped", "failed", "lost")
                     if values.count(s) or s in ("done", "running", "failed"))


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
    console: Console
    bar: object  # the console's counter of finished trials
    outcome: dict = field(default_factory=dict)

    def set(self, name: str, status: str, message: str = "", announce: bool = False) -> None:
        trial = next(t for t in self.plan.trials if t.name == name)
        self.rows[name] = result_row(self.plan, trial, self.out, status, message)
        write_results(self.plan, self.out, self.rows)
        if announce:
            self.console.line(_trial_line(name, self.rows[name], status, message))
            self.bar.update(1)
        self.bar.set_postfix_str(_counts({n: r["status"] for n, r in self.rows.items()}))


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
    configs = plan.configs if plan.configs is not None else trial_configs(plan)  # validated once
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
        # Made before Ray redirects the streams: it keeps writing to the ones the process had.
        console = Console()
        bar = console.counter(len(plan.trials), "trials", "trial", initial=len(plan.trials) - len(todo))
        console.line(f"sweep of {len(plan.trials)} trials into {out}" + (f" ({len(todo)} to run)" if resume else "")
                     + f": {threads} thread{'s' * (threads > 1)} per trial, {where}")
        # Ctrl-C and SIGTERM raise KeyboardInterrupt at once, and ray.shutdown() (leaving
        # `connected`) ends the trials' processes. Tune's own way (its SIGINT handler, or a
        # Stopper) waits for each trial's next report, up to an epoch, then 10 s more before
        # killing it; a run directory needs no such care: it keeps its last committed epoch.
        signals = StopSignals(raises=KeyboardInterrupt)
        sweep = _Sweep(plan, out, rows, console, bar)
        try:
            with signals, _quiet(verbose):
                _tune(plan, todo, configs, out, threads, sweep, verbose)
        except KeyboardInterrupt:
            signals.received = signals.received or signal.SIGINT
        finally:
            bar.close()
            # Trials cut short by a signal get no completion event: say what they are.
            for trial in plan.trials:
                status, message = rows[trial.name]["status"], rows[trial.name]["message"]
                rows[trial.name] = result_row(plan, trial, out, "interrupted" if status == "running" else status,
                                              message)
            write_results(plan, out, rows)
    draw(plan, out, rows)
    if signals.received is not None:
        _, code = signal_exit(signals.received)
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

        max_t = max(configs[t.name].train.epochs for t in todo)
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
