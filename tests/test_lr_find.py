"""`mlp-cli lr-find` (issue 26): fastai's learning-rate range test on the generated circles data.

The pieces are checked against hand computations (the ramp, the smoothing, the rules on
synthetic curves), the loop against the engine (its first loss is the config's network on the
training run's first batch), and the command for its output, its plot, its exit codes and for
writing nothing else.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlp_cli import config, data
from mlp_cli import lr_find as lf
from mlp_cli.cli import main
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.train import build_network, check_network
from mlp_cli import shapes

ROOT = Path(__file__).resolve().parents[1]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"
MNIST = ROOT / "configs" / "mnist_mlp.yaml"
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]


def run(*args):
    return CliRunner().invoke(main, ["lr-find", *map(str, args)])


def circles(*overrides):
    return config.load(CIRCLES, list(overrides))


# ----------------------------------------------------------------------------- the pieces
def test_ramp_is_exponential_from_start_to_end():
    lrs = lf.ramp(1e-6, 10.0, 100)
    assert len(lrs) == 100 and lrs[0] == 1e-6 and lrs[-1] == 10.0
    ratios = lrs[1:] / lrs[:-1]
    np.testing.assert_allclose(ratios, (10.0 / 1e-6) ** (1 / 99), rtol=1e-12)  # one factor per batch
    np.testing.assert_allclose(np.log10(lrs), np.linspace(-6, 1, 100), atol=1e-12)
    np.testing.assert_allclose(lf.ramp(0.5, 2.0, 3), [0.5, 1.0, 2.0])


def test_smoothing_matches_a_hand_computation():
    # avg_n = 0.98 avg_{n-1} + 0.02 loss_n, reported as avg_n / (1 - 0.98^n):
    # avg_1 = 0.02, / 0.02 = 1; avg_2 = 0.0196 + 0.04 = 0.0596, / 0.0396;
    # avg_3 = 0.058408 + 0.01 = 0.068408, / (1 - 0.941192) = / 0.058808.
    expected = [1.0, 0.0596 / 0.0396, 0.068408 / 0.058808]
    np.testing.assert_allclose(lf.smooth([1.0, 2.0, 0.5]), expected, rtol=1e-12)
    s = lf.SmoothedLoss()
    assert [s.add(v) for v in (1.0, 2.0, 0.5)] == lf.smooth([1.0, 2.0, 0.5])
    assert lf.smooth([3.0] * 50) == pytest.approx([3.0] * 50, rel=1e-12)  # debiased: no pull towards 0


def test_valley_on_synthetic_curves():
    # One fall from index 0 to 6 (length 6 after the tie at index 1): fastai's start is 6 - 6 = 0,
    # d = 6, so the point is 0 + int(2) + int(1) = 3.
    assert lf.valley([3.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 1.0, 4.0]) == 3
    # A flat start, a bump that the longest falling subsequence skips, then the divergence:
    # 2 1.9 1.8 1.7 1.6 1.5 1.0 ends at 10, length 7, start 3, d = 7: 3 + int(7/3) + int(7/6) = 6.
    assert lf.valley([2, 2, 2, 2, 1.9, 1.8, 1.7, 2.5, 1.6, 1.5, 1.0, 3]) == 6
    assert lf.valley([1.0, 2.0, 3.0]) == 0  # nothing falls
    assert lf.valley([2.0, 1.0]) == 0  # fastai's index would be -1 (the last point)


def test_steep_on_a_synthetic_curve():
    lrs = np.logspace(-5, 0, 9)
    losses = [2.3, 2.3, 2.2, 2.0, 1.9, 1.0, 0.9, 0.8, 3.0]  # the fastest fall is from 4 to 5
    assert lf.steep(lrs, losses) == 4
    uneven = [1e-3, 2e-3, 1e-1, 2e-1]  # per log-lr, not per step: the wide step falls more slowly
    assert lf.steep(uneven, [3.0, 2.5, 1.5, 1.2]) == 0


def test_suggest_trims_as_fastai():
    losses = list(np.linspace(3, 1, 30))  # falling everywhere
    lrs = list(np.logspace(-6, -3, 30))
    # steps 100: the first 10 and the last 5 are left out, so valley sees 10..24 (d = 14 - (-1)).
    assert lf.suggest(lrs, losses, 100, "valley") == 10 + lf.valley(losses[10:25])
    assert lf.suggest(lrs, losses, 100, "steep") == 10 + lf.steep(lrs[10:25], losses[10:25])
    assert lf.suggest(lrs[:15], losses[:15], 100, "valley") is None  # nothing left after the trim
    assert lf.suggest(lrs[:16], losses[:16], 100, "steep") is None  # steep needs two points


# ----------------------------------------------------------------------------- the loop
def test_first_loss_is_the_seeded_network_on_the_training_runs_first_batch():
    cfg = circles()
    result = lf.find_lr(cfg, start=1e-4, end=1e-2, steps=5)
    _, infos = check_network(cfg)
    model = build_network(cfg, shapes.architecture(infos))
    split = data.load_splits(cfg.data, cfg.seed, ("train",))["train"]
    x, y = next(data.batches(split, cfg.train.batch_size, train=True, rng=np.random.default_rng([cfg.seed, 0, 1]),
                             normalization=data.normalization(split, cfg.data)))
    loss, _ = softmax_cross_entropy(model.forward(x), y)
    assert result.raw_losses[0] == pytest.approx(float(loss), rel=1e-6)
    assert result.losses[0] == pytest.approx(result.raw_losses[0], rel=1e-12)  # debiased
    np.testing.assert_allclose(result.losses, lf.smooth(result.raw_losses), rtol=1e-12)
    again = lf.find_lr(cfg, start=1e-4, end=1e-2, steps=5)
    assert again.raw_losses == result.raw_losses  # seeded: the same every time


def test_ramp_goes_on_into_later_epochs():
    result = lf.find_lr(circles(), start=1e-5, end=1e-3, steps=50)  # 20 batches an epoch
    assert result.stopped == "completed" and result.batches == 50
    np.testing.assert_allclose(result.lrs, lf.ramp(1e-5, 1e-3, 50), rtol=1e-15)
    assert result.raw_losses[20] != result.raw_losses[0]


def test_stops_once_the_smoothed_loss_passes_4_times_its_best():
    result = lf.find_lr(circles(), start=0.1, end=1e4, steps=100)
    assert result.stopped == "diverged" and result.batches < 100
    losses = result.losses
    best_before = min(losses[:-1])
    assert losses[-1] > 4 * best_before  # the batch that stops it is the last recorded
    assert all(v <= 4 * min(losses[:i + 1]) for i, v in enumerate(losses[:-1]))  # and no earlier one would have
    assert result.stop_lr == result.lrs[-1]


def test_stops_at_a_non_finite_loss(monkeypatch):
    from mlp_cli.nn import losses

    real, calls = losses.softmax_cross_entropy, []

    def nan_at_batch_8(logits, y, smoothing=0.0):
        calls.append(1)
        loss, grad = real(logits, y, smoothing)
        return (math.nan if len(calls) == 8 else loss), grad

    monkeypatch.setattr(losses, "softmax_cross_entropy", nan_at_batch_8)
    result = lf.find_lr(circles(), start=1e-5, end=1e-3, steps=30)
    assert result.stopped == "non-finite" and result.batches == 7
    assert all(math.isfinite(v) for v in result.losses)
    assert result.stop_lr == pytest.approx(lf.ramp(1e-5, 1e-3, 30)[7])


# ----------------------------------------------------------------------------- the command
def test_json_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("--config", CIRCLES, "--start", "1e-3", "--end", "100", "--steps", "60", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"suggestion", "lrs", "losses", "rule"} <= out.keys()
    assert out["rule"] == "steep" and out["suggestion"] == out["suggestions"]["steep"]
    assert len(out["lrs"]) == len(out["losses"]) == len(out["raw_losses"]) == out["batches"] <= 60
    assert out["lrs"][0] == 1e-3 and out["suggestion"] in out["lrs"]
    assert out["suggestions"]["steep"] in out["lrs"]
    assert list(tmp_path.iterdir()) == []  # no run directory, no file at all


def test_text_output_names_the_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("--config", CIRCLES, "--start", "1e-3", "--end", "100", "--steps", "60", "--rule", "steep")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and " of 60 batches, lr 0.001 to " in lines[0]
    assert lines[1].startswith("suggested lr ") and "(steep: " in lines[1] and "; valley: " in lines[1]
    assert "the config has optim.lr 0.03" in lines[1]


def test_plot_is_written_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("--config", CIRCLES, "--start", "1e-3", "--end", "100", "--steps", "60", "--plot", "lr.png",
            "train.batch_size=20")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.png"]  # no runs/, no temporary file
    assert "plot written to lr.png" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--start", "1", "--end", "1"], "--start 1 must be below --end 1"),
    (["--start", "10", "--end", "0.1"], "--start 10 must be below --end 0.1"),
    (["--steps", "1"], "--steps 1 is too few"),
    (["--steps", "0"], "--steps 0 is too few"),
    (["--steps", "-5"], "--steps -5 is too few"),
    (["--steps", "2.5"], "--steps '2.5' is not a whole number"),
    (["--start", "-1e-3"], "--start -1e-3 must be a finite number above 0"),
    (["--start", "0"], "--start 0 must be a finite number above 0"),
    (["--end", "nan"], "--end nan must be a finite number above 0"),
    (["--end", "inf"], "--end inf must be a finite number above 0"),
    (["--start", "abc"], "--start 'abc' is not a number"),
    (["nosuch.key=1"], "nosuch"),
    (["optim.lr=-1"], "optim.lr"),
    (["--plot", "lr.nosuchformat"], "matplotlib cannot write"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    plot = [] if "--plot" in args else ["--plot", "lr.png"]
    r = run("--config", CIRCLES, *plot, *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_missing_data_exits_1_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLP_CLI_DATA points at an empty folder (conftest)
    r = subprocess.run([*MLP_CLI, "lr-find", "--config", str(MNIST), "--plot", "lr.png"], capture_output=True,
                       text=True)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1 and "MNIST" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "lr.png").exists() and not (tmp_path / "runs").exists()


def test_a_suggestion_needs_enough_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("--config", CIRCLES, "--start", "10", "--end", "1e6", "--steps", "100", "--json")  # diverges at once
    assert r.exit_code == 1
    assert json.loads(r.stdout)["suggestion"] is None
    assert "too few batches for a suggestion" in r.stderr and len(r.stderr.splitlines()) == 1


def test_ctrl_c_exits_130_without_a_traceback_or_a_plot(tmp_path):
    # A ramp too gentle to diverge and far too long to finish: interrupted in its loop.
    p = subprocess.Popen([*MLP_CLI, "lr-find", "--config", str(CIRCLES), "--start", "1e-7", "--end", "2e-7",
                          "--steps", "1000000", "--plot", "lr.png"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip() == "error: interrupted" and "Traceback" not in err and out == ""
    assert os.listdir(tmp_path) == []


def test_help_lists_every_option():
    r = CliRunner().invoke(main, ["lr-find", "--help"])
    for option in ("--config", "--start", "--end", "--steps", "--rule", "--plot", "--json", "[default: no picture]"):
        assert option in r.stdout
