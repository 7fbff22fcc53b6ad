"""TensorBoard event files: a run's curves, readable live by `tensorboard --logdir runs`.

Written with TensorBoard's own record writer and protocol buffers (the `tensorboard` package,
which needs neither TensorFlow nor torch; tensorboardX would import torch into every training
run). The scalars are metrics.csv's values, under the same names:

    epoch/train_loss  epoch/train_acc  epoch/val_loss  epoch/val_acc  epoch/lr  epoch/seconds
                      (step: the epoch, 1-based)
    batch/train_loss  the running mean training loss of the epoch so far, every BATCH_EVERY
                      batches and at most once per BATCH_SECONDS (step: batches since the
                      start of the run), so a long epoch shows progress

Layout and the one rule that keeps a resumed run's curves whole: the epochs of each commit
(one epoch, or those of one second in a run of very short epochs) have their own file,
`RUN/tensorboard/events.out.tfevents.<time>.mlp-cli.epoch<NNNNNN>` named by its first epoch,
written while they train and closed just before their commit. A resume first deletes the files
that begin after the committed epoch (epochs killed half-way, or whose commit a crash took),
then trains those epochs again: no point is shown twice and none is missing. Files sort by
their creation time, which is epoch order, as TensorBoard reads them.

A sweep adds TensorBoard's HParams summaries: `hparams_config` at the sweep's root (the keys
varied and the metrics to compare) and `session_start` in each trial's run (its values).
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

FOLDER = "tensorboard"
BATCH_EVERY = 10  # batches between two batch/train_loss points...
BATCH_SECONDS = 1.0  # ...and seconds at least
SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")  # metrics.csv's columns
_EPOCH_FILE = re.compile(r"^events\.out\.tfevents\.\d+\.mlp-cli\.epoch(\d{6})$")
HPARAMS_FILE_SUFFIX = "mlp-cli.hparams"


def _event_file(folder: Path, suffix: str):
    """A new event file in `folder` holding the file-version header; returns its RecordWriter."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"events.out.tfevents.{time.time():010.0f}.{suffix}"
    writer = RecordWriter(open(path, "wb"))
    writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    return writer


def _scalars_event(values: dict[str, float], step: int):
    """One event holding several scalars (tag -> value) of one step: a sixth of the bytes of six."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)
                                         for tag, value in values.items()])
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)


def discard_uncommitted(run_dir, committed_epochs: int) -> None:
    """Delete the epoch files of epochs after `committed_epochs` (see the module's rule)."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _EPOCH_FILE.match(path.name)
        if match and int(match.group(1)) > committed_epochs:
            path.unlink()


class EventLog:
    """The event file of the epochs between two commits: batch points while they train, each
    epoch's metrics row when it ends; closed (on disk) just before the commit of its epochs.

    A failed write (a full disk) stops this log and calls `failed(reason)`: the curves are a view
    of the run, not part of it, and metrics.csv keeps every number."""

    def __init__(self, run_dir, first_epoch: int, failed):
        self._failed, self._writer = failed, None
        self._guard(lambda: setattr(self, "_writer", _event_file(Path(run_dir) / FOLDER,
                                                                 f"mlp-cli.epoch{first_epoch:06d}")))
        self._finished = self._tell()  # where the points of the last finished epoch end
        self._last_batch = -math.inf

    def _tell(self) -> int:
        return self._writer._writer.tell() if self._writer is not None else 0  # RecordWriter's file

    def _guard(self, action) -> None:
        try:
            action()
        except OSError as e:
            self._writer = None
            self._failed(e.strerror or str(e))

    def batch(self, step: int, mean_loss: float) -> None:
        """A batch point, at most one per BATCH_SECONDS: a long epoch shows its progress, while a
        toy run of thousands of millisecond epochs writes no more than its epoch points."""
        now = time.monotonic()
        if self._writer is not None and now - self._last_batch >= BATCH_SECONDS:
            self._last_batch = now
            self._write(_scalars_event({"batch/train_loss": mean_loss}, step))

    def epoch(self, row: dict) -> None:
        """An epoch's metrics.csv `row` (numbers, None for an empty value), at step `row["epoch"]`."""
        if self._writer is None:
            return
        self._write(_scalars_event({f"epoch/{k}": row[k] for k in SCALARS if row.get(k) is not None}, row["epoch"]))
        self._finished = self._tell()

    def _write(self, event) -> None:
        def write():
            self._writer.write(event.SerializeToString())
            self._writer.flush()  # to the file now, where a live `tensorboard` reads it

        self._guard(write)

    def close(self) -> None:
        """On disk, without the batch points of an epoch that did not finish (a stop mid-epoch
        commits the epochs before it: its points come again when it is trained again)."""
        if self._writer is None:
            return

        def close():
            file = self._writer._writer  # RecordWriter keeps the file it was given as _writer
            file.flush()
            file.truncate(self._finished)
            os.fsync(file.fileno())
            file.close()

        self._guard(close)
        self._writer = None


def write_trial_hparams(run_dir, hparams: dict, trial_id: str) -> None:
    """A sweep trial's HParams values (`hparams`: dotted key -> value), once per run."""
    from tensorboard.plugins.hparams import summary_v2

    folder = Path(run_dir) / FOLDER
    if folder.is_dir() and any(p.name.endswith(HPARAMS_FILE_SUFFIX) for p in folder.iterdir()):
        return
    writer = _event_file(folder, HPARAMS_FILE_SUFFIX)
    event = _summary_event(summary_v2.hparams_pb(_plain(hparams), trial_id=trial_id))
    writer.write(event.SerializeToString())
    writer.close()


def write_sweep_hparams_config(sweep_dir, hparams: dict[str, list]) -> None:
    """The HParams experiment at a sweep's root: the varied keys (`hparams`: key -> the values
    tried) and the metrics to compare them by."""
    from tensorboard.plugins.hparams import summary_v2

    folder = Path(sweep_dir)
    for path in folder.glob(f"events.out.tfevents.*.{HPARAMS_FILE_SUFFIX}"):
        path.unlink()  # a resumed sweep states its experiment again, once
    params = [summary_v2.HParam(key, _domain(values)) for key, values in hparams.items()]
    metrics = [summary_v2.Metric(f"epoch/{key}", display_name=key) for key in ("val_acc", "val_loss", "train_loss", "train_acc")]
    writer = _event_file(folder, HPARAMS_FILE_SUFFIX)
    writer.write(_summary_event(summary_v2.hparams_config_pb(params, metrics)).SerializeToString())
    writer.close()


def _summary_event(summary):
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time(), summary=summary)


def _plain(hparams: dict) -> dict:
    """HParams values are bool, number or string: lists and other values as their YAML text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}


def _domain(values: list):
    from tensorboard.plugins.hparams import summary_v2

    values = list(_plain({str(i): v for i, v in enumerate(values)}).values())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return summary_v2.RealInterval(float(min(values)), float(max(values)))
    if all(isinstance(v, str) for v in values) or all(isinstance(v, bool) for v in values):
        return summary_v2.Discrete(sorted(set(values)))
    return None
