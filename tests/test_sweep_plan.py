"""The sweep validates each trial's config once, and checks its network once, before Ray starts;
sweep.yaml holds the plan only (not the validated configs). No Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlp_cli import config, sweep as sw, train
from mlp_cli.sweep import tune as sweep_tune

ROOT = Path(__file__).resolve().parent.parent
CIRCLES = str(ROOT / "configs" / "circles_mlp.yaml")
ARGS = ["train.epochs=2", "optim.lr=0.1,0.3", "train.batch_size=16,32"]


@pytest.fixture
def counted(monkeypatch):
    """How often config.validate and train.check_network run."""
    calls = {"validate": 0, "check_network": 0}
    validate, check_network = config.validate, train.check_network

    def counting_validate(*args, **kwargs):
        calls["validate"] += 1
        return validate(*args, **kwargs)

    def counting_check(*args, **kwargs):
        calls["check_network"] += 1
        return check_network(*args, **kwargs)

    monkeypatch.setattr(config, "validate", counting_validate)
    monkeypatch.setattr(train, "check_network", counting_check)
    return calls


@pytest.fixture
def no_ray(monkeypatch):
    """sweep.run up to the point where Ray would start: what it would hand to Tune."""
    handed = {}
    monkeypatch.setattr(sweep_tune, "ray_installed", lambda: True)
    monkeypatch.setattr(sweep_tune, "_run", lambda plan, out, todo, statuses, configs, threads, **kw:
                        handed.update(configs=configs, todo=todo) or {})
    return handed


def test_a_new_sweep_validates_and_checks_each_trial_once(tmp_path, counted, no_ray):
    plan = sw.make_plan(CIRCLES, ARGS)
    assert len(plan.trials) == 4
    assert counted == {"validate": 4, "check_network": 4}
    sw.run(plan, tmp_path / "s")
    assert counted == {"validate": 4, "check_network": 4}  # the run takes the plan's configs
    configs = no_ray["configs"]
    assert sorted(configs) == sorted(t.name for t in plan.trials)
    assert all(isinstance(c, config.Config) for c in configs.values())
    assert {(c.optim.lr, c.train.batch_size) for c in configs.values()} == {(0.1, 16), (0.1, 32), (0.3, 16), (0.3, 32)}


def test_a_resumed_sweep_validates_and_checks_each_trial_once(tmp_path, counted, no_ray):
    sw.write_plan(sw.make_plan(CIRCLES, ARGS), tmp_path / "s")
    saved = yaml.safe_load((tmp_path / "s" / sw.SWEEP_FILE).read_text())
    assert "configs" not in saved and [t["name"] for t in saved["trials"]] == ["lr0.1_batch_size16",
                                                                                  "lr0.1_batch_size32",
                                                                                  "lr0.3_batch_size16",
                                                                                  "lr0.3_batch_size32"]
    counted.update(validate=0, check_network=0)
    plan = sw.read_plan(tmp_path / "s")
    assert plan.configs is None
    sw.run(plan, tmp_path / "s", resume=True)
    assert counted == {"validate": 4, "check_network": 4}
    assert len(no_ray["configs"]) == 4
