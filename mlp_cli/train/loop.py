"""The training loop: for each epoch, train -> evaluate -> decide -> commit -> report.

`fit` is the one entry point: a new run directory or an existing one (resume), then the epochs
from where its committed state ends. `Trainer.run` is the skeleton, each step a method with one
job; the decisions (divergence, the best epoch, early stopping) are in steps.py.

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

import gc
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlp_cli import checkpoint, events, selection, shapes
from mlp_cli.config import Config, ConfigError
from mlp_cli.console import Console, Stopped, StopSignals, plural
from mlp_cli.errors import Divergence, Interrupted, RuntimeFailure, ShapeError, UsageError, signal_exit
from mlp_cli.rundir import RunDir
from mlp_cli.train import runstate, steps
from mlp_cli.train.network import build_network, check_outputs
from mlp_cli.train.runstate import EMA_PREFIX, State, metrics_row

COMMIT_INTERVAL = 1.0  # seconds: the most a kill -9 can cost a run of very short epochs


@dataclass
class RunResult:
    run_dir: Path
    epochs: int
    best_epoch: int | None
    best_val_acc: float | None
    test: dict | None
    early_stop: steps.EarlyStop | None = None


def fit(cfg: Config | None, run_dir, *, resume: bool = False, overrides=(), from_epoch: int | None = None,
        console: Console | None = None, on_epoch=None, command: str | None = None,
        hparams: dict | None = None, execution=None) -> RunResult:
    """Train `cfg` into `run_dir`: a new run, or with resume=True the run already there, whose saved
    config (with `overrides`) is used, from its last committed epoch (or `from_epoch`).

    `on_epoch(row, committed, final)` is called after each epoch with its metrics row (numbers),
    whether the epoch is committed to disk yet (see COMMIT_INTERVAL) and whether it is the run's
    last. `hparams` (a sweep trial's varied keys) go into the TensorBoard log. `execution` (an
    nn.execution.Execution, default Execution.from_env()) says which engine and how many threads
    run it; it is recorded in history.yaml. Raises
    ConfigError/ShapeError/UsageError before anything is written; SaveError, DataError,
    Divergence, Interrupted."""
    from mlp_cli.nn.execution import Execution

    console = console or Console()
    execution = execution if execution is not None else Execution.from_env()
    if resume:
        run, cfg, state, network = runstate.reopen(run_dir, overrides, from_epoch, command, console, execution)
    else:
        run, cfg, state, network = runstate.create(cfg, run_dir, command, execution)
    from mlp_cli.nn.parallel import single_threaded_blas

    signals = StopSignals()
    try:
        with signals, single_threaded_blas():
            trainer = Trainer(run, cfg, state, network, console, execution)
            if hparams is not None and cfg.train.tensorboard:
                events.write_trial_hparams(run.path, hparams, run.path.name)
            # The ~400,000 objects of the libraries imported by now (torch, TensorBoard's protocol
            # buffers) are never garbage, but each full collection walks them all: up to 0.2 s,
            # in the middle of an epoch (measured: MNIST MLP's first epoch 0.50 s instead of
            # 0.26). Frozen, they are left out; garbage made from here on is collected as before.
            gc.freeze()
            try:
                return trainer.run(signals, on_epoch)
            finally:
                gc.unfreeze()  # collectable again, for a process that goes on (a sweep worker, the tests)
    except Stopped as stop:
        done = runstate.read_state(run).epoch
        name, code = signal_exit(stop.signum)
        raise Interrupted(f"interrupted by {name}; {plural(done, 'finished epoch')} saved in {run.path}; "
                          f"continue with: mlp-cli train --resume {run.path}", code) from None
    except (ConfigError, RuntimeFailure, ShapeError, UsageError) as e:
        # A run that could not begin (bad data, a config the data contradicts, an unwritable
        # folder) leaves nothing behind; one that diverged stays, to be resumed with other settings.
        if run.created and not isinstance(e, Divergence) and not (run.path / "last.safetensors").exists():
            run.remove()
        raise
    finally:
        run.release()


class Trainer:
    """One run's epochs: the data, the network and its optimizer, and the run's bookkeeping
    (metrics rows, the best epoch, the epochs finished but not yet committed). `network` is
    check_network's (input_shape, infos), checked once, when the run was opened."""

    def __init__(self, run: RunDir, cfg: Config, state: State, network: tuple, console: Console, execution):
        from mlp_cli import data
        from mlp_cli.nn.losses import loss_function

        self.run_dir, self.run_files, self.cfg, self.console = run.path, run, cfg, console
        self.execution, self.loss = execution, loss_function(execution)  # the engine's loss
        input_shape, infos = network  # checked when the run was opened
        architecture = shapes.architecture(infos)
        # All three splits before the first epoch: a problem with the test data must not wait for the end.
        splits = data.load_splits(cfg.data, cfg.seed, ("train", "val", "test"))
        self.train_split, self.val_split, self.test_split = splits["train"], splits["val"], splits["test"]
        self.classes = list(self.train_split.classes)
        check_outputs(infos, len(self.classes), cfg.data.dataset)
        self.norm = data.normalization(self.train_split, cfg.data)
        self.meta = dict(architecture=architecture, input_shape=input_shape, normalization=self.norm,
                         classes=self.classes, config=cfg.dump())
        self._build(architecture, state)
        self.first_epoch, self.rows, self.best = state.epoch, list(state.rows), state.best
        self.pending, self.last_commit = None, time.monotonic()  # finished epochs not yet committed
        self.log, self.log_failure = None, None  # the open TensorBoard file; (epoch, reason) once one failed

    def _build(self, architecture: list[dict], state: State) -> None:
        """The network, its optimizer and, with train.ema, the moving average (a second network:
        it is what is evaluated and saved as best.safetensors, while the trained weights go on in
        `model` and last.safetensors)."""
        from mlp_cli.nn import warm_up_compiled
        from mlp_cli.nn.optim import Optimizer

        cfg, execution = self.cfg, self.execution
        self.model = build_network(cfg, architecture, execution=execution)
        self.model.skip_input_gradient()
        self.optimizer = Optimizer(cfg.optim, execution)
        # A layer class with compiled kernels says so (`has_compiled_kernels`); the execution may forbid them.
        if execution.compiled and not execution.reference and (
                any(getattr(layer, "has_compiled_kernels", False) for layer in self.model.layers)
                or (self.optimizer.name == "sgd" and self.optimizer.momentum)):
            # Their compiled kernels load on first use (Numba's import and the cached machine code,
            # about 0.3 s): now, so that no epoch's `seconds` carries it.
            warm_up_compiled(np.float32)
        if state.weights is not None:
            if state.architecture != architecture:
                raise ConfigError(f"invalid config: the network of {self.run_dir} differs from its config's; "
                                  "a resumed run keeps its model section")
            self.model.load_state_dict(state.weights)
            self.optimizer.load_state_dict(state.optimizer)
        self.evaluated, self.ema, self.ema_pairs = self.model, None, []
        if cfg.train.ema:
            live = self.model.state_dict()
            self.ema = state.ema if state.ema is not None else {k: v.copy() for k, v in live.items()}
            self.ema_pairs = steps.ema_pairs(self.ema, live)
            self.evaluated = build_network(cfg, architecture, execution=execution)
            self.evaluated.skip_input_gradient()

    # ------------------------------------------------------------------------- the skeleton
    def run(self, signals: StopSignals, on_epoch=None) -> RunResult:
        from mlp_cli.nn.optim import lr_at

        cfg, total = self.cfg, self.cfg.train.epochs
        stop = steps.early_stop(self.rows, cfg.train.early_stop)
        todo = self._announce(stop)
        bar = self.console.progress(todo, desc="epochs", unit="epoch", initial=self.first_epoch, total=total)
        try:
            for epoch in bar:
                lr = lr_at(epoch, cfg.optim.lr, cfg.optim.schedule, total)
                log = self.event_log(epoch)
                train_loss, train_acc, seconds = self.train_epoch(epoch, lr, log)
                val = self.validate()
                improved = self.select(epoch, val)
                row = metrics_row(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=val["loss"],
                                  val_acc=val["accuracy"], lr=lr, seconds=seconds)
                self.rows.append(row)
                if log is not None:
                    log.epoch(row)
                stop = steps.early_stop(self.rows, cfg.train.early_stop)
                final = stop is not None or epoch + 1 == total
                committed = self.save(epoch, improved, signals, now=final)
                self.report(row, improved, final)
                if on_epoch is not None:
                    on_epoch(row, committed, final)
                if stop is not None:
                    self.console.line(f"{stop.message()}; to train on: mlp-cli train --resume {self.run_dir} "
                                      f"train.early_stop.patience={max(2 * stop.patience, stop.patience + 1)}")
                    break
        except (Stopped, Divergence):
            self.flush(signals)
            raise
        finally:
            bar.close()
        test = self.finish(signals)
        if self.log_failure is not None:
            self.console.warn(f"the TensorBoard log stops at epoch {self.log_failure[0]}: {self.log_failure[1]} "
                              f"({self.run_dir / events.FOLDER}); metrics.csv has every epoch")
        return RunResult(self.run_dir, len(self.rows), self.best[0], self.best[1], test, stop)

    def _announce(self, stop: steps.EarlyStop | None) -> range:
        """The epochs left to train, and one line when there are none."""
        done, total = self.first_epoch, self.cfg.train.epochs
        if stop is not None:
            self.console.line(f"{self.run_dir} stopped early at epoch {stop.epoch} ({stop.monitor} had not improved by "
                              f"{stop.min_delta:g} for {plural(stop.patience, 'epoch')}); to train on, resume with a "
                              f"higher patience, e.g. train.early_stop.patience={max(2 * stop.patience, stop.patience + 1)}")
            return range(done, done)
        if done >= total and done > 0:
            self.console.line(f"{self.run_dir} already has {plural(done, 'epoch')}; raise train.epochs to train further")
        return range(done, total)

    # ------------------------------------------------------------------------- the steps
    def event_log(self, epoch: int) -> events.EventLog | None:
        """The TensorBoard file of the epochs up to the next commit, opened by the first of them;
        none once one could not be written (said at the end)."""
        if not self.cfg.train.tensorboard or self.log_failure is not None:
            return None
        if self.log is None:
            def failed(reason):
                self.log_failure = (epoch + 1, reason)

            self.log = events.EventLog(self.run_dir, epoch + 1, failed)
        return self.log

    def train_epoch(self, epoch: int, lr: float, log: events.EventLog | None) -> tuple[float, float, float]:
        """One pass over the training split; returns its mean loss, accuracy and seconds."""
        from mlp_cli import data
        from mlp_cli.nn.optim import ema_update

        cfg, model = self.cfg, self.model
        data_rng = np.random.default_rng([cfg.seed, epoch, 1])
        model.set_rng(np.random.default_rng([cfg.seed, epoch, 2]))
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        n_batches = math.ceil(len(self.train_split.y) / cfg.train.batch_size)
        bar = self.console.progress(
            data.batches(self.train_split, cfg.train.batch_size, train=True, rng=data_rng, normalization=self.norm,
                         augment=cfg.data.augment),
            total=n_batches, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False)
        started = time.perf_counter()
        for step, (x, y) in enumerate(bar):
            with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss, checked at once
                logits = model.forward(x)
                loss, dlogits = self.loss(logits, y, cfg.train.label_smoothing)
            steps.check_batch_loss(loss, epoch, step, lr, cfg.optim.lr, self.run_dir)
            model.backward(dlogits)
            self.optimizer.step(model.named_params(), model.named_grads(), lr)
            for average, value in self.ema_pairs:
                ema_update(average, value, cfg.train.ema)
            loss_sum += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            if step % events.BATCH_EVERY == 0:
                if log is not None:
                    log.batch(epoch * n_batches + step, loss_sum / seen)
                if self.console.bars:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}", lr=f"{lr:.3g}")
        seconds = time.perf_counter() - started
        bar.close()
        steps.check_epoch_loss(loss_sum / seen, len(self.classes), epoch, lr, cfg.optim.lr, self.run_dir)
        return loss_sum / seen, correct / seen, seconds

    def validate(self) -> dict:
        """The evaluated network (the moving average with train.ema) on the validation split."""
        from mlp_cli.evaluate import evaluate

        if self.ema is not None:
            self.evaluated.load_state_dict(self.ema)
        return evaluate(self.evaluated, self.val_split, batch_size=self.cfg.train.eval_batch_size,
                        normalization=self.norm, augment=self.cfg.data.augment)

    def select(self, epoch: int, val: dict) -> bool:
        """Model selection: whether this epoch is the best so far (without validation: every epoch)."""
        _, best_acc, best_loss = self.best
        improved = selection.is_better(val["accuracy"], val["loss"], best_acc, best_loss) or val["accuracy"] is None
        if improved:
            self.best = (epoch + 1, val["accuracy"], val["loss"])
        return improved

    def save(self, epoch: int, improved: bool, signals: StopSignals, now: bool) -> bool:
        """The epoch's files, committed at once, except epochs so short (a toy set) that the commits
        would cost more than the training: then once a second, and always when `now` (the run's last
        epoch), on a signal and before a divergence is reported. What a kill loses is recomputed
        exactly by a resume. Returns whether the epoch is committed."""
        training_state = self.optimizer.state_dict()
        if self.ema is not None:
            training_state.update({EMA_PREFIX + k: v for k, v in self.ema.items()})
        best_epoch, best_acc, best_loss = self.best
        files = {
            "last.safetensors": checkpoint.model_bytes(self.model, epoch=epoch + 1, **self.meta),
            "last.optim.safetensors": checkpoint.training_state_bytes(
                training_state, epoch=epoch + 1,
                info={"best_epoch": best_epoch, "best_val_acc": best_acc, "best_val_loss": best_loss}),
            "metrics.csv": runstate.metrics_csv(self.rows),
            "test_metrics.json": None,  # belongs to a finished run; this one goes on
        }
        if improved:
            files["best.safetensors"] = (files["last.safetensors"] if self.ema is None else
                                         checkpoint.model_bytes(self.evaluated, epoch=epoch + 1, **self.meta))
        elif self.pending is not None and "best.safetensors" in self.pending:
            files["best.safetensors"] = self.pending["best.safetensors"]
        self.pending = files
        if now or time.monotonic() - self.last_commit >= COMMIT_INTERVAL:
            self.flush(signals)
            return True
        return False

    def flush(self, signals: StopSignals) -> None:
        """Commit the finished epochs not committed yet, their TensorBoard file closed first."""
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.pending is not None:
            with signals.hold():
                self.run_files.commit(self.pending)
            self.pending, self.last_commit = None, time.monotonic()

    def report(self, row: dict, improved: bool, final: bool) -> None:
        """The epoch's line: the columns it has, at most one line a second (the last always)."""
        total = self.cfg.train.epochs
        text = f"epoch {row['epoch']}/{total}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
        if row["val_acc"] is not None:
            text += f"  val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%"
        text += f"  lr {row['lr']:.4g}  {row['seconds']:.1f}s" + ("  *" if improved and row["val_acc"] is not None else "")
        self.console.throttled_line(text, last=final)

    def finish(self, signals: StopSignals) -> dict | None:
        """The best checkpoint on the test split (test_metrics.json), then the pictures."""
        from mlp_cli.evaluate import checkpoint_result, metrics_from_logits, predict

        best_path = self.run_dir / "best.safetensors"
        if not best_path.exists():
            return None
        cfg = self.cfg
        best = checkpoint.load(best_path)
        best_model = checkpoint.load_model(best, execution=self.execution)
        logits = predict(best_model, self.test_split, batch_size=cfg.train.eval_batch_size, normalization=self.norm,
                         augment=cfg.data.augment)
        metrics = metrics_from_logits(logits, self.test_split.y, len(self.classes), self.loss)
        test = checkpoint_result(best_path, best, "test", metrics)
        with signals.hold():
            self.run_files.commit({"test_metrics.json": (json.dumps(test, indent=2) + "\n").encode()})
        if cfg.train.plots:
            self._draw(best_model, test, logits)
        return test

    def _draw(self, best_model, test: dict, logits) -> None:
        import warnings

        from mlp_cli import pictures

        # A picture that cannot be drawn (a full disk) is one "warning:" line like the others,
        # not Python's two-line warning that quotes this source line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pictures.draw_run(self.run_dir, metrics=self.rows, classes=self.classes,
                              confusion=test["confusion_matrix"], model=best_model, test_split=self.test_split,
                              test_logits=logits, train_split=self.train_split, normalization=self.norm)
        for warning in caught:
            self.console.warn(str(warning.message))
