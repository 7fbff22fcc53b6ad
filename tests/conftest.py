"""Every test runs with its own data root and cache folder, so none reads or writes the user's."""

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLP_CLI_DATA", str(tmp_path / "no-data-here"))
