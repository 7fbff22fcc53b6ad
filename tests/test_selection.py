"""The one model-selection rule, as the loop, metrics.csv readers and the sweep apply it."""

from mlp_cli import selection
from mlp_cli.sweep import Plan, best_trial


def test_higher_accuracy_then_lower_loss_then_the_earlier():
    assert selection.best_index([(0.5, 1.0), (0.7, 0.9), (0.7, 0.8), (0.7, 0.8), (0.6, 0.1)]) == 2
    assert selection.best_index([(None, None), (None, 0.3)]) is None
    assert selection.best_index([(0.5, None), (0.5, 2.0)]) == 1  # a missing loss counts as infinite
    assert selection.best_index([(0.9, 0.5), (None, 0.1), (0.2, 0.3)], metric="val_loss") == 1
    assert selection.best_index([(0.9, None)], metric="val_loss") is None


def test_best_row_reads_metrics_csv_strings_and_skips_epochs_without_validation():
    rows = [{"epoch": "1", "val_acc": "0.5", "val_loss": "0.9"}, {"epoch": "2", "val_acc": "", "val_loss": ""},
            {"epoch": "3", "val_acc": "0.5", "val_loss": "0.7"}, {"epoch": "4", "val_acc": "0.5", "val_loss": "0.8"}]
    assert selection.best_row(rows) == 2
    assert selection.best_row(rows[1:2]) is None


def test_the_sweep_picks_its_best_trial_by_the_same_rule():
    rows = {name: {"trial": name, "best_val_acc": acc, "best_val_loss": loss}
            for name, acc, loss in (("a", "0.8", "0.5"), ("b", "0.9", "0.6"), ("c", "0.9", "0.4"), ("d", "", ""),
                                    ("e", "0.5", "0.1"))}
    plan = Plan(config="c.yaml", overrides=[], search="grid", params={})
    assert best_trial(plan, rows)["trial"] == "c"
    plan.metric = "val_loss"
    assert best_trial(plan, rows)["trial"] == "e"
    assert best_trial(plan, {"d": rows["d"]}) is None
