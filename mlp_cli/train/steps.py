"""The decisions the training loop takes after each batch and each epoch, one small unit each:
divergence, early stopping, the moving average of the weights (model selection, the best epoch,
is selection.py's rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlp_cli.errors import Divergence

# An epoch whose mean training loss is this many times that of guessing (ln of the class count)
# has diverged even if every number stayed finite: with a learning rate far too high the logits
# grow without bound (the MNIST MLP at lr 10: 684 after the first epoch, 300 times ln 10).
DIVERGED = 20


# ----------------------------------------------------------------------------- divergence
def divergence(what: str, epoch: int, lr: float, run_dir) -> Divergence:
    """A diverged run's one message: what happened, the fix, and what was kept (`epoch` finished ones)."""
    kept = f"last good checkpoint: {run_dir / 'last.safetensors'} (epoch {epoch})" if epoch else "no epoch finished"
    return Divergence(f"training diverged: {what}; lower the learning rate, e.g. optim.lr={lr / 10:g}; {kept}")


def check_batch_loss(loss: float, epoch: int, step: int, lr: float, base_lr: float, run_dir) -> None:
    if not math.isfinite(loss):
        raise divergence(f"the loss became {loss} at epoch {epoch + 1}, batch {step + 1} (lr {lr:g})",
                         epoch, base_lr, run_dir)


def check_epoch_loss(mean_loss: float, classes: int, epoch: int, lr: float, base_lr: float, run_dir) -> None:
    chance = math.log(classes)
    if mean_loss > DIVERGED * chance:
        raise divergence(f"the mean training loss of epoch {epoch + 1} was {mean_loss:.4g}, more than "
                         f"{DIVERGED} times that of guessing (ln {classes} = {chance:.3g}; lr {lr:g})",
                         epoch, base_lr, run_dir)


# ----------------------------------------------------------------------------- early stopping
@dataclass(frozen=True)
class EarlyStop:
    """Why a run stopped early: at `epoch`, `monitor` had not improved by `min_delta` for
    `patience` epochs since its best value `best` at `best_epoch`."""

    epoch: int
    monitor: str
    patience: int
    min_delta: float
    best: float
    best_epoch: int

    def message(self) -> str:
        return (f"early stop after epoch {self.epoch}: {self.monitor} has not improved by at least {self.min_delta:g} "
                f"for {self.patience} epoch{'s' * (self.patience != 1)} (best {self.best:.4f} at epoch {self.best_epoch})")


def early_stop(rows: list[dict], rule) -> EarlyStop | None:
    """Keras's EarlyStopping(monitor, patience, min_delta) replayed over the metrics rows: an epoch
    improves when its value beats the best so far by more than min_delta (val_acc up, val_loss
    down); the run stops once `patience` epochs in a row have not. Replayed from the rows, so a
    resumed run, or one resumed with another patience, decides exactly as a straight run.
    `rule`: the config's train.early_stop (None: never)."""
    if rule is None:
        return None
    sign = 1 if rule.monitor == "val_acc" else -1
    best, best_epoch, wait = None, None, 0
    for row in rows:
        value = row[rule.monitor]
        if value is None:  # no validation split: config.py refuses early_stop without one
            continue
        if best is None or sign * (value - best) > rule.min_delta:
            best, best_epoch, wait = value, row["epoch"], 0
            continue
        wait += 1
        if wait >= rule.patience:
            return EarlyStop(row["epoch"], rule.monitor, rule.patience, rule.min_delta, best, best_epoch)
    return None


# ----------------------------------------------------------------------------- moving average
def ema_pairs(ema: dict, live: dict) -> list[tuple]:
    """(average, value) array pairs that `ema_update` moves together after each step."""
    return [(ema[k], live[k]) for k in live]
