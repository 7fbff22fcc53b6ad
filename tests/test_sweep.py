"""`mlp-cli sweep`: bad input refused before anything is written, trials that are plain
`mlp-cli train` runs, results.csv, and --resume that does not run finished trials again.

The sweeps run on a real local Ray instance (a few seconds to start) on the generated circles
data, so they need no download; one of two trials diverges on purpose.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mlp_cli import sweep as sw
from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parent.parent
CIRCLES = str(ROOT / "configs" / "circles_mlp.yaml")
MNIST_MLP = str(ROOT / "configs" / "mnist_mlp.yaml")
# 8 epochs of the circles MLP with a validation split; lr 1e38 overflows float32 in epoch 1.
COMMON = ["train.epochs=8", "data.val_size=50", "train.plots=false"]


def run_sweep(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def read_results(out: Path) -> dict[str, dict]:
    with open(out / "results.csv", newline="") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, expected", [
    (["optim.lr=0.1,abc"], "trial lrabc (optim.lr=abc): optim.lr: input should be a valid number"),
    (["optim.lrr=0.1,0.2"], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["optim.lr=0.1,"], "the list of optim.lr has an empty value"),
    (["optim.lr=0.1,0.2", "optim.lr=0.3"], "optim.lr is given twice"),
    (["train.epochs=2"], "nothing to sweep"),
    (["train.batch_size=64,0"], "trial batch_size0 (train.batch_size=0): train.batch_size: input should be greater"),
])
def test_bad_grid_exits_2_and_writes_nothing(tmp_path, args, expected):
    out = tmp_path / "sweep"
    result = run_sweep("--config", MNIST_MLP, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("params, expected", [
    ({"optim.lr": {"logunifrom": [1e-3, 10]}}, "unknown distribution 'logunifrom' (did you mean 'loguniform'?)"),
    ({"optim.lr": []}, "params.optim.lr: the list is empty"),
    ({"optim.lr": {"choice": []}}, "choice needs a non-empty list"),
    ({"optim.lr": {"loguniform": [0, 10]}}, "loguniform needs low > 0"),
    ({"optim.lr": {"uniform": [1e-3, 10]}, "search": "grid"}, "uniform draws random values; use search: random"),
    ({"optim.lr": {"loguniform": [1e-3, 10]}, "search": "random", "trials": 0}, "trials: 0 is not a number of trials"),
    ({"train.batch_size": {"randint": [1, 8]}, "search": "random", "metric": "accuracy"}, "metric: 'accuracy'"),
])
def test_bad_sweep_file_exits_2_and_writes_nothing(tmp_path, params, expected):
    spec = {"search": params.pop("search", "random"), **{k: params.pop(k) for k in ("trials", "metric") if k in params},
            "params": params}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    result = run_sweep("--config", MNIST_MLP, "--out", out, "--sweep", tmp_path / "s.yaml")
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not out.exists()


def test_a_trial_without_validation_split_is_refused(tmp_path):
    result = run_sweep("--config", CIRCLES, "--out", tmp_path / "s", "optim.lr=0.1,0.3", "data.val_size=0")
    assert result.exit_code == 2
    assert "data.val_size is 0" in result.output and not (tmp_path / "s").exists()


def test_an_existing_sweep_folder_is_not_overwritten(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.yaml").write_text("{}")
    result = run_sweep("--config", CIRCLES, "--out", tmp_path / "s", *COMMON, "optim.lr=0.1,0.3")
    assert result.exit_code == 2 and f"--resume {tmp_path / 's'}" in result.output


# ----------------------------------------------------------------------------- trials
def test_grid_values_split_at_top_level_commas_only():
    assert sw.split_values("0.1,0.2") == ["0.1", "0.2"]
    assert sw.split_values("[28,28],[32, 32]") == ["[28,28]", "[32, 32]"]
    assert sw.split_values("[28,28]") == ["[28,28]"]
    assert sw.split_values("'a,b',c") == ["'a,b'", "c"]
    plain, axes = sw.parse_arguments(["train.epochs=3", "data.image_size=[28,28],[32,32]", "optim.lr=0.1,0.2"])
    assert plain == ["train.epochs=3"] and axes == {"data.image_size": ["[28,28]", "[32,32]"], "optim.lr": ["0.1", "0.2"]}
    # ~KEY removes a key the file sets, in every trial (config.apply_overrides does it)
    plain, axes = sw.parse_arguments(["optim.name=adam", "~optim.momentum", "optim.lr=0.1,0.2"])
    assert plain == ["optim.name=adam", "~optim.momentum"] and axes == {"optim.lr": ["0.1", "0.2"]}


def test_trial_names_are_short_and_unique():
    trials = sw.grid_trials({"optim.lr": [0.01, 0.1], "model.layers.1.out_features": [50],
                             "model.layers.3.out_features": [10], "optim.name": ["sgd"]})
    assert [t.name for t in trials] == ["lr0.01_1.out_features50_3.out_features10_namesgd",
                                        "lr0.1_1.out_features50_3.out_features10_namesgd"]
    assert trials[0].overrides == ["optim.lr=0.01", "model.layers.1.out_features=50",
                                   "model.layers.3.out_features=10", "optim.name=sgd"]


def test_random_trials_follow_their_distributions_and_seed():
    params = {"optim.lr": {"loguniform": [1e-3, 10]}, "train.batch_size": {"randint": [16, 18]},
              "optim.momentum": {"uniform": [0.5, 0.9]}, "optim.name": ["sgd", "adam"]}
    trials = sw.random_trials(params, 40, seed=1)
    assert [t.overrides for t in trials] == [t.overrides for t in sw.random_trials(params, 40, seed=1)]
    assert [t.overrides for t in trials] != [t.overrides for t in sw.random_trials(params, 40, seed=2)]
    values = [dict(o.split("=") for o in t.overrides) for t in trials]
    lrs = [float(v["optim.lr"]) for v in values]
    assert all(1e-3 <= lr <= 10 for lr in lrs) and min(lrs) < 1e-2 and max(lrs) > 1  # log scale: both ends reached
    assert {int(v["train.batch_size"]) for v in values} == {16, 17, 18}  # both ends included
    assert all(0.5 <= float(v["optim.momentum"]) <= 0.9 for v in values)
    assert {v["optim.name"] for v in values} == {"sgd", "adam"}
    assert len({t.name for t in trials}) == 40 and trials[0].name.startswith("00-lr")


# ----------------------------------------------------------------------------- Ray: optional, imported only by sweep
def test_help_and_train_do_not_import_ray(tmp_path):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mlp_cli.cli import main\n"
        "r = CliRunner()\n"
        "a = r.invoke(main, ['--help'])\n"
        f"b = r.invoke(main, ['train', '--config', {CIRCLES!r}, '--out', {str(tmp_path / 'run')!r}, '--quiet',"
        " 'train.epochs=2', 'train.plots=false'])\n"
        "c = r.invoke(main, ['sweep', '--help'])\n"
        "assert (a.exit_code, b.exit_code, c.exit_code) == (0, 0, 0), (a.output, b.output, c.output)\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_without_ray_sweep_says_how_to_install_it(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"  # Python's way to make a module unimportable, as if not installed
        "from mlp_cli.cli import main\n"
        f"main(['sweep', '--config', {CIRCLES!r}, '--out', {str(tmp_path / 's')!r}, 'data.val_size=50',"
        " 'optim.lr=0.1,0.3'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {sw.INSTALL_HINT}"
    assert not (tmp_path / "s").exists()


def test_an_unwritable_out_fails_before_ray_starts(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_sweep("--config", CIRCLES, "--out", tmp_path / "file" / "s", *COMMON, "optim.lr=0.1,0.3")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot write the sweep folder {tmp_path / 'file' / 's'}: ")


def test_malformed_address_is_bad_usage(tmp_path):
    result = run_sweep("--config", CIRCLES, "--out", tmp_path / "s", "--address", "nohost", *COMMON, "optim.lr=0.1,0.3")
    assert result.exit_code == 2 and "give auto or HOST:PORT" in result.output
    assert not (tmp_path / "s").exists()


def test_unreachable_address_fails_with_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port on this machine where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_sweep("--config", CIRCLES, "--out", tmp_path / "s", "--address", f"127.0.0.1:{port}", *COMMON,
                       "optim.lr=0.1,0.3")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused)")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- a sweep on a local Ray instance
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-trial sweep of the circles MLP: lr 0.3 trains, lr 1e38 diverges in its first epoch."""
    out = tmp_path_factory.mktemp("sweep") / "circles"
    result = run_sweep("--config", CIRCLES, "--out", out, *COMMON, "optim.lr=0.3,1e38")
    return out, result


def test_sweep_runs_every_trial_and_names_the_best(finished):
    out, result = finished
    assert result.exit_code == 0, result.output
    rows = read_results(out)
    assert list(rows) == ["lr0.3", "lr1e+38"]
    ok, bad = rows["lr0.3"], rows["lr1e+38"]
    assert ok["status"] == "done" and ok["optim.lr"] == "0.3" and ok["message"] == ""
    assert bad["status"] == "failed" and "training diverged" in bad["message"] and bad["test_acc"] == ""
    metrics = read_csv(out / "lr0.3" / "metrics.csv")
    best = max(metrics, key=lambda r: float(r["val_acc"]))
    assert float(ok["best_val_acc"]) == float(best["val_acc"]) and int(ok["best_epoch"]) == int(best["epoch"])
    assert int(ok["epochs"]) == 8 == len(metrics)
    assert float(ok["test_acc"]) == pytest.approx(json.loads((out / "lr0.3" / "test_metrics.json").read_text())["accuracy"])
    assert "trial lr1e+38 failed: training diverged" in result.output
    assert f"best trial: lr0.3 (done), validation accuracy {100 * float(best['val_acc']):.2f}%" in result.output
    assert ("reproduce it: MLP_CLI_THREADS=1 mlp-cli train --config " + CIRCLES + " train.epochs=8 data.val_size=50 "
            "train.plots=false optim.lr=0.3") in result.output
    plan = yaml.safe_load((out / "sweep.yaml").read_text())
    assert plan["params"] == {"optim.lr": [0.3, 1e38]} and [t["name"] for t in plan["trials"]] == ["lr0.3", "lr1e+38"]
    assert (out / "sweep.png").stat().st_size > 10_000


def test_a_trial_is_exactly_a_train_run(finished, tmp_path):
    from mlp_cli import config, train

    out, _ = finished
    cfg = config.load(CIRCLES, COMMON + ["optim.lr=0.3"])
    train.fit(cfg, tmp_path / "plain", resume=False, console=train.Console(quiet=True))
    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    plain = [{k: r[k] for k in columns} for r in read_csv(tmp_path / "plain" / "metrics.csv")]
    assert [{k: r[k] for k in columns} for r in read_csv(out / "lr0.3" / "metrics.csv")] == plain
    assert yaml.safe_load((out / "lr0.3" / "config.yaml").read_text()) == cfg.dump()


def test_report_reads_a_sweep_folder_as_its_runs(finished):
    out, _ = finished
    result = CliRunner().invoke(main, ["report", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [r["run"] for r in runs] == ["lr0.3", "lr1e+38"]
    assert runs[0]["differences"] == {"optim.lr": 0.3} and runs[1]["epochs"] == 0


def test_resume_runs_only_the_trials_not_finished(finished, tmp_path):
    """As a Ctrl-C leaves it: one trial interrupted (here: its run directory gone entirely), the
    failed one final. --resume trains the first again, identically, and leaves the other alone."""
    import shutil

    out, _ = finished
    copy = tmp_path / "circles"
    shutil.copytree(out, copy)
    rows = read_results(copy)
    before = read_csv(copy / "lr0.3" / "metrics.csv")
    shutil.rmtree(copy / "lr0.3")
    rows["lr0.3"]["status"] = "interrupted"
    with open(copy / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows["lr0.3"]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows.values())
    failed = snapshot(copy / "lr1e+38")

    result = run_sweep("--resume", copy)
    assert result.exit_code == 0, result.output
    assert "(1 to run)" in result.output and "trial lr0.3 done" in result.output and "lr1e+38 failed" not in result.output
    assert read_results(copy)["lr0.3"]["status"] == "done" and read_results(copy)["lr1e+38"]["status"] == "failed"
    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert [{k: r[k] for k in columns} for r in read_csv(copy / "lr0.3" / "metrics.csv")] == \
        [{k: r[k] for k in columns} for r in before]
    assert snapshot(copy / "lr1e+38") == failed

    again = snapshot(copy)
    result = run_sweep("--resume", copy)  # all final: nothing runs, no Ray needed beyond starting it
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in snapshot(copy).items() if k not in ("results.csv",)} == \
        {k: v for k, v in again.items() if k not in ("results.csv",)}
    assert read_results(copy) == read_csv_rows(again, "results.csv")


def read_csv_rows(snap, name) -> dict[str, dict]:
    rows = csv.DictReader(snap[name][1].decode().splitlines())
    return {row["trial"]: row for row in rows}


def test_resume_refuses_options_that_would_change_the_sweep(finished):
    out, _ = finished
    result = run_sweep("--resume", out, "optim.lr=0.1,0.2")
    assert result.exit_code == 2 and "does not apply to --resume" in result.output


def test_one_engine_thread_holds_blas_to_one_thread_too(monkeypatch):
    """MLP_CLI_THREADS is a run's CPU budget: with 1, BLAS must not add threads of its own (a
    plain run would then sum in another order than the same run in a sweep's worker)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401  (loads the BLAS library that threadpoolctl then sees)

    from mlp_cli.nn import parallel

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with parallel.single_threaded_blas():
            inside = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert inside and set(inside) == {1}


def test_ctrl_c_stops_the_sweep_with_130_and_leaves_it_resumable(tmp_path):
    import os
    import signal
    import time

    from mlp_cli import rundir

    out = tmp_path / "s"
    child = subprocess.Popen([sys.executable, "-m", "mlp_cli.cli", "sweep", "--config", CIRCLES, "--out", str(out),
                              "train.epochs=100000", "data.val_size=50", "train.plots=false", "optim.lr=0.1,0.3"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until both trials have committed a few epochs
            metrics = list(out.glob("*/metrics.csv"))
            if len(metrics) == 2 and all(len(read_csv(m)) >= 3 for m in metrics):
                break
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert stderr.strip().endswith(f"continue with: mlp-cli sweep --resume {out}")
    rows = read_results(out)
    assert {r["status"] for r in rows.values()} == {"interrupted"}
    assert all(int(r["epochs"]) >= 3 and rundir.has_run(out / name) for name, r in rows.items())


def test_trials_of_an_image_folder_without_image_size_are_resolved_as_train_resolves_them(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(tmp_path / "img" / split / c / f"{i}.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "img"), "val_size": 2},
        "model": {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 2}]},
        "train": {"epochs": 1, "batch_size": 4}, "optim": {"lr": 0.1}}))
    plan = sw.make_plan(str(cfg), ["optim.lr=0.1,0.2"])
    configs = sw.trial_configs(plan)
    assert len(configs) == 2
    for c in configs.values():
        assert c.data.image_size == (6, 5) and c.data.root == str(tmp_path / "img")


def test_each_trial_is_a_tensorboard_run_and_the_sweep_an_hparams_experiment(finished):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    out, _ = finished
    mux = EventMultiplexer().AddRunsFromDirectory(str(out))
    mux.Reload()
    hparams = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(hparams["."][metadata.EXPERIMENT_TAG])
    assert [h.name for h in experiment.hparam_infos] == ["optim.lr"]
    assert {m.name.tag for m in experiment.metric_infos} >= {"epoch/val_acc", "epoch/val_loss"}
    trials = {run.split("/")[0]: run for run in hparams if run != "."}
    assert set(trials) == {p.name for p in out.iterdir() if (p / "config.yaml").exists()} and len(trials) == 2
    lrs = set()
    for run in trials.values():
        start = metadata.parse_session_start_info_plugin_data(hparams[run][metadata.SESSION_START_INFO_TAG])
        lrs.add(start.hparams["optim.lr"].number_value)
    assert lrs == {0.3, 1e38}
    trained = trials["lr0.3"]
    rows = list(csv.DictReader(open(out / "lr0.3" / "metrics.csv")))
    assert [e.value for e in mux.Scalars(trained, "epoch/val_acc")] == pytest.approx([float(r["val_acc"]) for r in rows])
