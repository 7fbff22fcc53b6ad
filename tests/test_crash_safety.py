"""Runs survive being stopped at any instant: kill -9 at every write, SIGTERM, Ctrl-C, two writers,
damaged files, and resumes that change the config."""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlp_cli import checkpoint, config, rundir, train
from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"


def circles(*overrides):
    return config.load(CIRCLES, ["train.plots=false", *overrides])


def final_files(run_dir: Path) -> dict:
    """What must not depend on interruptions: every file but the wall-clock column and the paths."""
    metrics = [line.rsplit(",", 1)[0] for line in (run_dir / "metrics.csv").read_text().splitlines()]
    test = yaml.safe_load((run_dir / "test_metrics.json").read_text())
    test.pop("checkpoint")
    return {"metrics": metrics, "last": (run_dir / "last.safetensors").read_bytes(),
            "optim": (run_dir / "last.optim.safetensors").read_bytes(),
            "best": (run_dir / "best.safetensors").read_bytes(), "test": test,
            "config": (run_dir / "config.yaml").read_bytes()}


# ----------------------------------------------------------------------------- kill at every write
class Killed(BaseException):
    """The simulated kill -9: raised by the write it hits and by every filesystem change after it."""


MUTATIONS = ("open", "write", "fsync", "rename", "replace", "link", "unlink", "rmdir", "mkdir", "ftruncate", "pwrite")


@contextlib.contextmanager
def killed_at(n: int):
    """Let n-1 filesystem changes happen, then die: the n-th and all later ones raise Killed
    before doing anything (a write dies half-way), as if the process had been killed there."""
    real = {name: getattr(os, name) for name in MUTATIONS}
    state = {"count": 0, "dead": False}

    def wrap(name):
        def call(*args, **kwargs):
            if name == "open" and not (args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return real[name](*args, **kwargs)  # reading changes nothing
            if not state["dead"]:
                state["count"] += 1
                if state["count"] < n:
                    return real[name](*args, **kwargs)
                state["dead"] = True
                if name == "write":  # a torn write: half of the bytes reach the file
                    real["write"](args[0], bytes(args[1])[: len(args[1]) // 2])
            raise Killed(f"killed at change {n} ({name})")
        return call

    for name in MUTATIONS:
        setattr(os, name, wrap(name))
    try:
        yield state
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def continue_until_done(out: Path, cfg):
    """What a user does after a kill: resume the run, or start it again if the folder never appeared."""
    if out.exists():
        return train.fit(None, out, resume=True, console=train.Console(quiet=True))
    return train.fit(cfg, out, console=train.Console(quiet=True))


def test_kill_at_every_write_point_then_resume_gives_the_uninterrupted_files(tmp_path, monkeypatch):
    monkeypatch.setattr(train.loop, "COMMIT_INTERVAL", 0.0)  # commit every epoch: the most write points
    monkeypatch.setattr(rundir, "_alive", lambda pid: False)  # the "killed" creator is gone
    cfg = circles("train.epochs=2", "train.batch_size=50")
    quiet = train.Console(quiet=True)
    train.fit(cfg, tmp_path / "straight", console=quiet)
    expected = final_files(tmp_path / "straight")

    n, rng = 0, random.Random(0)
    while True:
        n += 1
        out = tmp_path / f"k{n}"
        with killed_at(n) as state:
            try:
                train.fit(cfg, out, console=quiet)
            except Killed:
                pass
        if not state["dead"]:
            break  # n is past the last write of a whole run: every point has been tried
        if rng.random() < 0.3 and out.exists():  # sometimes the resume is killed too, during recovery or later
            with killed_at(rng.randint(1, 40)):
                with contextlib.suppress(Killed):
                    train.fit(None, out, resume=True, console=quiet)
        continue_until_done(out, cfg)
        assert final_files(out) == expected, f"killed at write {n}"
        assert not list(out.glob(".*.tmp")) and not (out / ".commits" / ".tmp").exists()
        assert not list(tmp_path.glob(f".k{n}.new-*"))  # what a killed creation left beside the folder is gone
        shutil.rmtree(out)
    assert n > 100  # the run really has that many write points (creation, 2 epochs, test metrics)


def test_sigkill_at_random_instants_then_resume(tmp_path):
    args = ["train.epochs=1500", "train.plots=false"]
    straight = tmp_path / "straight"
    subprocess.run([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(straight), "--quiet", *args],
                   check=True, capture_output=True)
    expected = final_files(straight)
    out, rng, kills, compared = tmp_path / "killed", random.Random(1), 0, 0
    while kills < 3 or compared == 0:
        cmd = ["--resume", str(out)] if out.exists() else ["--config", str(CIRCLES), "--out", str(out), *args]
        proc = subprocess.Popen([*MLP_CLI, "train", "--quiet", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.5, 2.5) if kills < 3 else 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        assert final_files(out) == expected, f"after {kills} kills"
        compared += 1
        shutil.rmtree(out)  # finished between kills: the comparison holds; kill the next one more


# ----------------------------------------------------------------------------- signals
def wait_for_epochs(run_dir: Path, n: int, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        metrics = run_dir / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) > n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} epochs in {run_dir}")


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_commits_and_exits_with_its_code_and_resume_matches(tmp_path, sig, code, name):
    args = ["train.epochs=600", "train.plots=false"]
    straight = tmp_path / "straight"
    subprocess.run([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(straight), "--quiet", *args],
                   check=True, capture_output=True)
    out = tmp_path / "r"
    proc = subprocess.Popen([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("epoch 1/600")  # training, before its first commit (1 s)
    proc.send_signal(sig)
    sent = time.time()
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == code, err
    assert f"interrupted by {name}" in err and f"mlp-cli train --resume {out}" in err and "Traceback" not in err
    assert not (out / ".lock").exists()  # given back on the way out
    # The finished epochs were committed on the way out, including any the 1-second rule was holding back.
    assert checkpoint.load(out / "last.safetensors").metadata["epoch"] >= 1
    r = subprocess.run([*MLP_CLI, "train", "--resume", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert final_files(out) == final_files(straight)


# ----------------------------------------------------------------------------- two writers
def test_a_second_writer_is_refused_at_once_and_the_first_finishes(tmp_path):
    out = tmp_path / "r"
    args = ["train.epochs=2000", "train.plots=false"]  # ~4 s: long enough for two refusals meanwhile
    first = subprocess.Popen([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(out), "--quiet", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_epochs(out, 0, first)
    for cmd in (["--resume", str(out)], ["--config", str(CIRCLES), "--out", str(out)]):
        started = time.time()
        r = subprocess.run([*MLP_CLI, "train", *cmd], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert f"in use by another mlp-cli process (pid {first.pid} " in r.stderr
        assert time.time() - started < 10
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len((out / "metrics.csv").read_text().splitlines()) == 2001


def test_two_runs_started_together_on_one_folder(tmp_path):
    out = tmp_path / "r"
    procs = [subprocess.Popen([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(out), "--quiet",
                               "train.epochs=50", "train.plots=false"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another mlp-cli process" in refused or "already holds a run" in refused


# ----------------------------------------------------------------------------- resume rules
def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("override", ["seed=7", "data.val_size=0.5", "model.init.std=0.5"])
def test_resume_refuses_overrides_that_change_finished_epochs(tmp_path, override):
    out = tmp_path / "r"
    assert run_cli("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=3",
                   "train.plots=false").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = run_cli("train", "--resume", out, override, "train.epochs=5")
    assert r.exit_code == 2, r.output
    assert override.split("=")[0] in r.output and "cannot change" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("overrides", [["train.epochs=2"], ["optim.lr=0.5"], ["train.ema=0.9", "train.epochs=3"]])
def test_resume_refuses_overrides_that_would_hold_for_no_epoch(tmp_path, overrides):
    # A finished 3-epoch run: fewer epochs, or a change with no epoch left to train, would make
    # config.yaml and history.yaml describe epochs that never ran that way.
    out = tmp_path / "r"
    assert run_cli("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=3",
                   "train.plots=false").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = run_cli("train", "--resume", out, *overrides)
    assert r.exit_code == 2, r.output
    assert "already has 3 epochs" in r.output and "train.epochs" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # Ending an interrupted run early (train.epochs lowered to the epochs it has) is still allowed.
    assert run_cli("train", "--resume", out, "--quiet", "train.epochs=3").exit_code == 0


def test_resume_records_allowed_overrides_in_history_and_warns_about_the_schedule(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=3", "train.plots=false",
                   "optim.schedule.name=cosine").exit_code == 0
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--quiet", "train.epochs=5", "optim.momentum=0.5"])
    assert r.exit_code == 0, r.output
    assert "epochs 1-3 followed it for a 3-epoch run, epochs 4-5 follow it for a 5-epoch run" in r.output
    history = yaml.safe_load((out / "history.yaml").read_text())
    assert history[0]["from_epoch"] == 1 and "train.epochs=3" in history[0]["command"]
    assert history[1]["from_epoch"] == 4
    assert history[1]["changed"] == {"train.epochs": {"from": 3, "to": 5}, "optim.momentum": {"from": 0.0, "to": 0.5}}
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["momentum"] == 0.5
    # A schedule that does not depend on the length gets no warning.
    out2 = tmp_path / "r2"
    assert run_cli("train", "--config", CIRCLES, "--out", out2, "--quiet", "train.epochs=3",
                   "train.plots=false").exit_code == 0
    r = CliRunner().invoke(main, ["train", "--resume", str(out2), "--quiet", "train.epochs=4"])
    assert r.exit_code == 0 and "schedule" not in r.output


def test_resume_may_change_the_optimizer_which_then_starts_with_no_state(tmp_path):
    """SGD with momentum -> without (~optim.momentum) -> Adam -> SGD with momentum: each change
    that makes the saved state meaningless to the new rule starts it afresh, with a warning
    (it used to end in an unexpected ValueError, exit 1, after history.yaml had recorded it). A new
    optim.lr alone is no schedule change: no warning about train.epochs."""
    out = tmp_path / "r"
    assert run_cli("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=2", "train.plots=false",
                   "optim.momentum=0.9").exit_code == 0
    assert any(k.endswith("momentum_buffer") for k in checkpoint.load_training_state(out / "last.optim.safetensors")[0])
    steps = [(["~optim.momentum"], "from sgd (momentum_buffer) to sgd (no state): it starts from epoch 3 with no state"),
             (["optim.name=adam", "optim.lr=0.01"], None),  # no state to drop
             (["optim.name=adamw"], None),  # the same moments
             (["optim.name=sgd", "optim.momentum=0.5"], "from adamw (exp_avg, exp_avg_sq, step) to sgd (momentum_buffer): it starts from epoch 6 with no state")]
    for epochs, (overrides, warning) in enumerate(steps, start=3):
        r = CliRunner().invoke(main, ["train", "--resume", str(out), "--quiet", f"train.epochs={epochs}", *overrides])
        assert r.exit_code == 0, r.output
        assert (warning in r.output) if warning else ("optimizer changes" not in r.output), r.output
        assert "schedule depends on train.epochs" not in r.output
        kept = checkpoint.load_training_state(out / "last.optim.safetensors")[0]
        expected = {3: set(), 4: {"exp_avg", "exp_avg_sq", "step"}, 5: {"exp_avg", "exp_avg_sq", "step"},
                    6: {"momentum_buffer"}}[epochs]
        assert {k.rpartition(".")[2] for k in kept} == expected, (epochs, sorted(kept)[:4])


def test_damaged_last_checkpoint_names_the_last_good_epoch_and_continues_from_it(tmp_path, monkeypatch):
    monkeypatch.setattr(train.loop, "COMMIT_INTERVAL", 0.0)
    out = tmp_path / "r"
    cfg = circles("train.epochs=4")
    train.fit(cfg, tmp_path / "straight", console=train.Console(quiet=True))
    train.fit(circles("train.epochs=3"), out, console=train.Console(quiet=True))
    last = out / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])  # damaged in place by hand (the same file as in .commits)
    r = run_cli("train", "--resume", out, "train.epochs=4")
    assert r.exit_code == 1
    assert "damaged" in r.output and "The last good state is epoch 2" in r.output
    assert f"mlp-cli train --resume {out} --from-epoch 2" in r.output
    r = run_cli("train", "--resume", out, "--from-epoch", "2", "train.epochs=4", "--quiet")
    assert r.exit_code == 0, r.output
    assert final_files(out)["metrics"] == final_files(tmp_path / "straight")["metrics"]
    assert final_files(out)["last"] == final_files(tmp_path / "straight")["last"]
    r = run_cli("train", "--resume", out, "--from-epoch", "9")
    assert r.exit_code == 2 and "no intact state of epoch 9" in r.output


def test_unwritable_out_fails_before_loading_data(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f" / "run", Path("/proc/mlp-cli-run")):
        r = subprocess.run([*MLP_CLI, "train", "--config", str(ROOT / "configs" / "mnist_mlp.yaml"), "--out", str(out)],
                           capture_output=True, text=True, env={**os.environ, "MLP_CLI_DATA": str(tmp_path / "absent")})
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and "cannot create the run directory" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "absent").exists()


def test_full_disk_during_training_exits_1_and_the_last_checkpoint_still_evaluates(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(disk)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "r"
        # 3000 hidden units: each weights file is 60 KB, so the first commit (last, best and a second of
        # metrics rows: about 140 KB) fits and the second (a second later) does not.
        # Without the TensorBoard log: the hundreds of toy epochs of that second would fill the disk first.
        r = subprocess.run([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(out), "train.epochs=5000",
                            "model.layers.0.out_features=3000", "train.plots=false", "train.tensorboard=false"],
                           capture_output=True, text=True)
        assert r.returncode == 1, r.stderr
        assert "no space left on the device" in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0
        r = subprocess.run([*MLP_CLI, "eval", "--checkpoint", str(out / "last.safetensors"), "--json"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert 0 <= yaml.safe_load(r.stdout)["accuracy"] <= 1
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_file_replaced_by_hand_is_put_back_with_a_warning(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=2",
                   "train.plots=false").exit_code == 0
    committed = (out / "config.yaml").read_text()
    (out / "config.yaml").unlink()  # what an editor does: a new file under the old name
    (out / "config.yaml").write_text(committed.replace("lr: 0.03", "lr: 0.5"))
    r = run_cli("train", "--resume", out, "train.epochs=3", "--quiet")
    assert r.exit_code == 0, r.output
    assert "config.yaml in" in r.output and "committed version again" in r.output and "KEY=VALUE" in r.output
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.03
    r = run_cli("train", "--resume", out, "train.epochs=4", "--quiet")  # nothing replaced: no warning
    assert r.exit_code == 0 and "warning" not in r.output
