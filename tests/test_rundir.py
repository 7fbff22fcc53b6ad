"""The run directory's protocol on its own: commit, publish, recovery, lock, permissions, full disk."""

import os
import shutil
import subprocess
import sys

import pytest

from mlp_cli import rundir
from mlp_cli.errors import UsageError
from mlp_cli.rundir import RunDir


def top(path):
    return {name: (path / name).read_bytes() for name in rundir.FILES if (path / name).is_file()}


def test_create_commits_generation_zero_and_publishes_plain_files(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"a: 1\n", "history.yaml": b"[]\n"})
    try:
        assert top(run.path) == {"config.yaml": b"a: 1\n", "history.yaml": b"[]\n"}
        assert [g.name for g in run.generations()] == ["000000"]
        assert rundir.has_run(run.path)
        assert not list(tmp_path.glob(".r.*"))  # the staging folder was renamed into place
    finally:
        run.release()


def test_commit_replaces_keeps_and_deletes_files_and_keeps_two_generations(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    try:
        run.commit({"metrics.csv": b"1", "last.safetensors": b"w1", "test_metrics.json": b"t"})
        run.commit({"metrics.csv": b"2", "last.safetensors": b"w2", "test_metrics.json": None})
        assert top(run.path) == {"config.yaml": b"c", "metrics.csv": b"2", "last.safetensors": b"w2"}
        gens = run.generations()
        assert [g.name for g in gens] == ["000002", "000001"]  # generation 0 pruned
        run.commit({"test_metrics.json": b"t2"})  # the same weights: the fall-back stays the one before
        assert [g.name for g in run.generations()] == ["000003", "000001"]
        assert run.read("metrics.csv", gens[1]) == b"1" and run.read("test_metrics.json", gens[1]) == b"t"
        # The top-level files are the generation's files, not copies.
        assert os.path.samefile(run.path / "metrics.csv", run.generations()[0] / "metrics.csv")
        with pytest.raises(ValueError):
            run.commit({"notes.txt": b"x"})
    finally:
        run.release()


def test_recovery_publishes_a_commit_that_a_crash_left_unpublished(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"c", "metrics.csv": b"1"})
    gen = run.generations()[0]
    # A crash after the commit point: a newer generation exists, the top still shows the old one,
    # a half-written pending generation and a temporary file lie around.
    newer = gen.parent / "000001"
    shutil.copytree(gen, newer)
    (newer / "metrics.csv").unlink()
    (newer / "metrics.csv").write_bytes(b"2")
    (gen.parent / ".tmp").mkdir()
    (gen.parent / ".tmp" / "metrics.csv").write_bytes(b"3")
    (run.path / ".metrics.csv.1234.tmp").write_bytes(b"partial")
    run.release()
    run = RunDir.open(tmp_path / "r")
    try:
        assert top(run.path) == {"config.yaml": b"c", "metrics.csv": b"2"}
        assert not (gen.parent / ".tmp").exists()
        assert not list(run.path.glob(".*.tmp"))
    finally:
        run.release()


def test_deleted_top_level_file_is_restored_by_recovery(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"c", "last.safetensors": b"w"})
    run.release()
    (tmp_path / "r" / "last.safetensors").unlink()
    run = RunDir.open(tmp_path / "r")
    run.release()
    assert (tmp_path / "r" / "last.safetensors").read_bytes() == b"w"


def test_plain_run_of_an_earlier_version_is_adopted(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_bytes(b"c")
    (old / "last.safetensors").write_bytes(b"w")
    (old / "metrics.csv").write_bytes(b"m")
    assert rundir.has_run(old)
    run = RunDir.open(old)
    try:
        assert run.read("last.safetensors") == b"w" and run.read("metrics.csv") == b"m"
    finally:
        run.release()


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    with pytest.raises(UsageError, match=rf"in use by another mlp-cli process \(pid {os.getpid()} "):
        RunDir.open(tmp_path / "r")
    with pytest.raises(UsageError, match="in use"):
        RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    run.release()
    with pytest.raises(UsageError, match="already holds a run"):
        RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    # A process that held the lock and died: its lock goes with it.
    code = ("import sys, os; sys.path.insert(0, %r); from mlp_cli.rundir import RunDir; "
            "RunDir.open(%r); os._exit(9)") % (os.getcwd(), str(tmp_path / "r"))
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert (tmp_path / "r" / ".lock").read_text().startswith("pid ")  # a kill leaves its lock file
    RunDir.open(tmp_path / "r").release()
    assert not (tmp_path / "r" / ".lock").exists()


def test_an_existing_empty_folder_is_used_and_one_with_other_files_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir.create(empty, {"config.yaml": b"c"}).release()
    assert (empty / "config.yaml").read_bytes() == b"c"
    busy = tmp_path / "busy"
    (busy / "MNIST" / "raw").mkdir(parents=True)
    (busy / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for attempt in (rundir.check_creatable, lambda path: RunDir.create(path, {"config.yaml": b"c"})):
        with pytest.raises(UsageError) as refused:
            attempt(busy)
        message = str(refused.value)
        assert "\n" not in message
        assert f"{busy} is a folder that holds other files (MNIST/, notes.txt), not a run" in message
        assert "choose another --out" in message
        # Nothing written: not in the folder, not beside it (no staging folder, no lock).
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_folder_that_became_non_empty_meanwhile_is_refused_and_left_alone(tmp_path, monkeypatch):
    busy = tmp_path / "r"
    real = rundir._refuse_existing
    calls = []

    def someone_writes_after_the_first_check(path):
        calls.append(path)
        if len(calls) == 1:
            real(path)
            path.mkdir()
            (path / "theirs.txt").write_text("x")
        else:
            real(path)

    monkeypatch.setattr(rundir, "_refuse_existing", someone_writes_after_the_first_check)
    with pytest.raises(UsageError, match="holds other files \\(theirs.txt\\)"):
        RunDir.create(busy, {"config.yaml": b"c"})
    assert [p.name for p in tmp_path.iterdir()] == ["r"] and [p.name for p in busy.iterdir()] == ["theirs.txt"]


def test_release_removes_the_lock_and_a_refusal_leaves_none(tmp_path):
    run = RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    assert (tmp_path / "r" / rundir.LOCK).is_file()
    run.release()
    run.release()  # idempotent
    assert not (tmp_path / "r" / rundir.LOCK).exists()
    with pytest.raises(UsageError, match="already holds a run"):
        RunDir.create(tmp_path / "r", {"config.yaml": b"c"})  # probes the lock: takes it, gives it back
    assert not (tmp_path / "r" / rundir.LOCK).exists()
    RunDir.open(tmp_path / "r").release()
    assert not (tmp_path / "r" / rundir.LOCK).exists()
    removed = RunDir.create(tmp_path / "gone", {"config.yaml": b"c"})
    removed.remove()
    assert not (tmp_path / "gone").exists()


def test_a_lock_released_while_being_taken_is_taken_afresh_and_only_once(tmp_path, monkeypatch):
    """The release protocol's race: B opens .lock, A unlinks it and closes, B's flock succeeds on
    the unlinked file. B must notice and lock the new .lock, or a third process could lock that
    one while B believes it holds the run."""
    import fcntl

    first = RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
    real_flock = fcntl.flock
    released = []

    def flock(fd, op):
        if not released:  # between B's open and B's flock
            released.append(True)
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    second = RunDir.open(tmp_path / "r")
    monkeypatch.setattr(rundir.fcntl, "flock", real_flock)
    try:
        lock = tmp_path / "r" / rundir.LOCK
        assert os.path.sameopenfile(second._lock_fd, os.open(lock, os.O_RDONLY))
        with pytest.raises(UsageError, match=rf"in use by another mlp-cli process \(pid {os.getpid()} "):
            RunDir.open(tmp_path / "r")
    finally:
        second.release()
    assert not (tmp_path / "r" / rundir.LOCK).exists()


def test_files_get_the_permissions_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir.create(tmp_path / "r", {"config.yaml": b"c"})
        run.commit({"last.safetensors": b"w"})
        lock_mode = (tmp_path / "r" / ".lock").stat().st_mode & 0o777  # the lock exists while it is held
        run.release()
    finally:
        os.umask(old)
    assert lock_mode == 0o644
    for name in ("config.yaml", "last.safetensors"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_unwritable_place_is_one_clear_error(tmp_path, where):
    (tmp_path / "f").write_text("x")
    path = tmp_path / "f" / "r" if where == "under a file" else "/proc/mlp-cli-run"
    with pytest.raises(rundir.SaveError, match="cannot create the run directory"):
        RunDir.create(path, {"config.yaml": b"c"})


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KB filesystem (tmpfs); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_keeps_the_last_commit_and_says_how_much_is_needed(tiny_disk):
    run = RunDir.create(tiny_disk / "r", {"config.yaml": b"c"})
    try:
        run.commit({"last.safetensors": b"1" * 20_000})
        with pytest.raises(rundir.SaveError, match=r"no space left on the device \(.* MB free, about 0\.1 MB needed\)"):
            run.commit({"last.safetensors": b"2" * 100_000})
        assert (run.path / "last.safetensors").read_bytes() == b"1" * 20_000
        assert not (run.path / rundir.COMMITS / rundir.PENDING).exists()  # the partial generation is gone
        run.commit({"last.safetensors": b"3" * 10_000})  # and the run goes on once there is room
        assert (run.path / "last.safetensors").read_bytes() == b"3" * 10_000
    finally:
        run.release()


def test_creation_removes_what_killed_creations_left_but_not_a_live_one(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tmp_path / f".r.new-{host}-{dead.stdout.strip()}-aaaaaa"
    live = tmp_path / f".r.new-{host}-{os.getpid()}-bbbbbb"  # a creation in progress in this process
    other_host = tmp_path / f".r.new-elsewhere-{dead.stdout.strip()}-cccccc"
    for d in (abandoned, live, other_host):
        (d / rundir.COMMITS).mkdir(parents=True)
    RunDir.create(tmp_path / "r", {"config.yaml": b"c"}).release()
    assert not abandoned.exists() and live.exists() and other_host.exists()
