"""The run directory: its layout, how an epoch is committed, recovery after a crash, the lock.

A run must survive what clusters and laptops do to it (kill -9, the OOM killer, a preempted
node, a power cut, a full disk, a second command pointed at the same folder): whatever instant
it is stopped at, the folder it leaves is one that `mlp-cli train --resume` continues, and the
continued run ends with the same files as an uninterrupted one. Every writer (train, resume,
the sweep's trials) goes through this module; readers (report, the sweep's results) read the
published files through `read`, without the lock.

Layout:

    config.yaml              the config in force (overrides applied)
    history.yaml             each start and resume of the run, its overrides, the epoch they hold from
    metrics.csv              one row per finished epoch
    last.safetensors         the weights after the last finished epoch
    last.optim.safetensors   their optimizer state, epoch and best-so-far bookkeeping
    best.safetensors         the weights of the best validation epoch (a plain PyTorch state dict)
    test_metrics.json        best.safetensors on the test split, once the run has finished
    *.png                    pictures, drawn when the run finishes (a resume draws them again)
    .lock                    flock'ed by the one process that writes the run; holds its pid
    .commits/000041/         the newest committed generation: a complete set of the files above
    .commits/000040/         the newest one before it with other weights: the state to fall back on
                             when a file is damaged by hand

Invariant: the newest folder in .commits is complete and on disk, and its files belong to one
moment of the run (the weights, optimizer state, metrics rows and best checkpoint after the same
epoch). The files at the top are hard links into it (copies where the filesystem has no hard
links), so people, scripts and PyTorch read plain files under the documented names.

Commit (`RunDir.commit`), the way Orbax commits a checkpoint step and SQLite a transaction:

    1. write the changed files into .commits/.tmp and fsync each one; hard-link the unchanged
       ones from the newest generation; fsync .commits/.tmp;
    2. rename .commits/.tmp to .commits/<n+1> and fsync .commits. This rename is THE commit
       point: a crash before it leaves generation n, a crash after it generation n+1;
    3. publish: link each file to a temporary name at the top and rename it over the old one,
       fsync the run directory, delete the generations no longer needed.

Recovery (`RunDir.open`, by every writer, under the lock, before anything else): delete
.commits/.tmp and temporary files, then publish the newest generation again. Every step is
either discarded or repeatable, so a crash during recovery is recovered the same way.

Creation is atomic as well: the folder is assembled under a hidden name beside it, with its
lock taken and generation 0 (config.yaml, history.yaml) committed, and renamed into place, so a
run directory that exists always holds a config that `--resume` can start from. The place must
be free or an empty folder: one that holds a run is refused (it is resumed, not overwritten),
and so is one that holds anything else, so that a run's files never mix with the user's (the
rename, which only replaces an empty folder, enforces it against a racing writer too).

One writer at a time: the lock is an flock on .lock, which the kernel drops when its process
dies, so a lock left by a killed process is taken over at once and a live one is refused.
The file exists only while someone holds it, or after a kill:

    1. take: open (creating) .lock, flock it, then check that the file locked is still the one
       at .lock (fstat against stat); if a releaser removed it meanwhile, close and start again;
    2. release (`RunDir.release`: the run finished, failed, diverged or was interrupted): unlink
       .lock while still holding the flock, then close it. A taker that opened the old file
       fails the check of step 1 and locks a new one, so two holders never coexist.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlp_cli.errors import RuntimeFailure, UsageError
from mlp_cli.files import create_file, fsync_dir, remove_quietly, temp_name

FILES = ("config.yaml", "history.yaml", "metrics.csv", "last.safetensors", "last.optim.safetensors",
         "best.safetensors", "test_metrics.json")
COMMITS, PENDING, LOCK = ".commits", ".tmp", ".lock"
_NO_HARD_LINKS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class SaveError(RuntimeFailure):
    """The run directory could not be written (full disk, read-only folder); the last commit is intact."""


class NotARun(UsageError, ValueError):
    """A path that is not a readable run directory (exit code 2)."""


SECTIONS = ("data", "model", "train", "optim")


@dataclass
class RunFiles:
    """What a reader (report, sweep) sees of a run directory: its published files, parsed."""

    path: Path
    config: dict
    metrics: list[dict]  # the rows of metrics.csv, as strings
    test: dict | None  # test_metrics.json, once the run has finished


def read(path) -> RunFiles:
    """The published files of the run directory `path`, without the lock: each file is replaced
    atomically, so it is whole, though during a commit one file may be an epoch ahead of another.
    NotARun, with what is wrong, for a folder that is not a run."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise NotARun(f"{path}: not a run directory ({'no such folder' if not path.exists() else 'a file'}); "
                      "pass folders that mlp-cli train created, e.g. runs/mnist_mlp-20261127-101500")
    cfg_path = path / "config.yaml"
    if not cfg_path.is_file():
        raise NotARun(f"{path}: not a run directory (no config.yaml); pass folders that mlp-cli train created")
    try:
        config = yaml.safe_load(cfg_path.read_text())
    except OSError as e:
        raise NotARun(f"{cfg_path}: cannot read the run's config ({e.strerror or e})") from None
    except (yaml.YAMLError, ValueError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise NotARun(f"{cfg_path}: malformed YAML{where} ({getattr(e, 'problem', None) or e}); "
                      "not a config that mlp-cli train wrote") from None
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in SECTIONS):
        raise NotARun(f"{cfg_path}: not a config that mlp-cli train wrote (sections {', '.join(SECTIONS)} expected)")
    try:
        text = (path / "metrics.csv").read_text() if (path / "metrics.csv").exists() else ""
        metrics = parse_metrics(text)
    except (OSError, ValueError) as e:
        raise NotARun(f"{path / 'metrics.csv'}: not a metrics file of mlp-cli train ({e})") from None
    test = None
    if (path / "test_metrics.json").is_file():
        try:
            test = json.loads((path / "test_metrics.json").read_text())
        except (OSError, ValueError) as e:
            raise NotARun(f"{path / 'test_metrics.json'}: unreadable ({e})") from None
        if not isinstance(test, dict):
            test = None
    return RunFiles(path, config, metrics, test)


def parse_metrics(text: str) -> list[dict]:
    """The rows of a metrics.csv (dicts of strings); ValueError if it is not one."""
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and not {"epoch", "val_acc"} <= set(rows[0]):
            raise ValueError("columns epoch and val_acc expected")
        for row in rows:
            int(float(row["epoch"]))
    except (TypeError, KeyError, csv.Error) as e:
        raise ValueError(str(e)) from None
    return rows


def has_run(path) -> bool:
    """Whether `path` holds a run that `--resume` can continue (at least its config is committed)."""
    path = Path(path)
    return _newest(path / COMMITS) is not None or _plain_run(path)


def _plain_run(path: Path) -> bool:
    """A run written before generations existed: its files at the top only."""
    return (path / "config.yaml").is_file() and (path / "last.safetensors").is_file()


class RunDir:
    """A run directory that this process holds the lock of. Get one with `create` or `open`."""

    def __init__(self, path: Path, lock_fd: int, created: str | None = None):
        self.path = Path(path)
        self._lock_fd = lock_fd
        # "folder" or "files" when this process made the run (removed again if it fails before
        # its first epoch): the whole folder, or only its files in a folder that held others.
        self.created = created
        self.restored: list[str] = []  # top-level files replaced by hand that `open` put back

    # ------------------------------------------------------------------ opening and closing
    @classmethod
    def create(cls, path, files: dict[str, bytes]) -> RunDir:
        """A new run directory holding `files` (generation 0), locked. The place must be free or
        an empty folder; a file, a run (in use or not) and a folder holding anything else are
        refused (UsageError), before anything is written."""
        path = Path(path)
        _refuse_existing(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_write(path, e, "create the run directory") from None
        _remove_abandoned_staging(path)
        staging = path.parent / f".{path.name}.new-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        run = None
        try:
            staging.mkdir()
            run = cls(staging, _lock(staging / LOCK), created="folder")
            (staging / COMMITS).mkdir()
            run.commit(files)
            try:
                os.rename(staging, path)  # atomic; replaces an empty folder, fails on a non-empty one
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                _refuse_existing(path)  # another process created a run, or other files, meanwhile
                raise UsageError(f"{path} changed while the run was being created there; try again") from None
            run.path = path
            fsync_dir(path.parent)
            return run
        except BaseException as e:
            if run is not None:
                run.release()
            if isinstance(e, OSError):
                raise _cannot_write(path, e, "create the run directory") from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def open(cls, path) -> RunDir:
        """The run directory `path`, locked and recovered (its newest commit published)."""
        path = Path(path)
        if not path.is_dir():
            raise UsageError(f"{path}: not a run directory ({'no such folder' if not path.exists() else 'a file'}); "
                             "pass a folder that mlp-cli train created")
        if not has_run(path):
            raise UsageError(f"{path}: not a run directory (no config.yaml); pass a folder that mlp-cli train created")
        try:
            run = cls(path, _lock(path / LOCK))
        except OSError as e:
            raise _cannot_write(path, e, "lock the run directory") from None
        try:
            run.restored = run.recover()
        except OSError as e:
            run.release()
            raise _cannot_write(path, e, "recover the run directory") from None
        except BaseException:
            run.release()
            raise
        return run

    def release(self) -> None:
        """Give up the lock and remove .lock (step 2 of the lock protocol in the module's
        docstring). Idempotent. A kill skips it: the kernel drops the flock, and the .lock left
        behind is taken over by the next writer."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                _unlink_lock(self.path / LOCK, fd)
            finally:
                os.close(fd)

    def remove(self) -> None:
        """Undo `create` (after a failure before the first epoch): nothing half-made stays behind."""
        if self.created == "folder":
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    # ------------------------------------------------------------------ reading the committed state
    def generations(self) -> list[Path]:
        """Committed generations, newest first."""
        return sorted(_generations(self.path / COMMITS), reverse=True)

    def file(self, name: str, generation: Path | None = None) -> Path | None:
        """Path of `name` in a generation (default: the newest), or None if it has no such file."""
        gen = generation or _newest(self.path / COMMITS)
        if gen is None or not (gen / name).is_file():
            return None
        return gen / name

    def read(self, name: str, generation: Path | None = None) -> bytes | None:
        path = self.file(name, generation)
        return None if path is None else path.read_bytes()

    # ------------------------------------------------------------------ writing
    def commit(self, files: dict[str, bytes | None]) -> None:
        """Make a new generation: the newest one with `files` replaced (None deletes a file), in
        one atomic step; then publish it at the top. Raises SaveError (the last commit intact)."""
        unknown = set(files) - set(FILES)
        if unknown:
            raise ValueError(f"not a file of a run directory: {', '.join(sorted(unknown))}")
        commits, newest = self.path / COMMITS, _newest(self.path / COMMITS)
        pending = commits / PENDING
        try:
            _remove_tree(pending)
            pending.mkdir()
            for name in FILES:
                if name in files:
                    if files[name] is not None:
                        create_file(pending / name, files[name])
                elif newest is not None and (newest / name).is_file():
                    _link_or_copy(newest / name, pending / name)
            fsync_dir(pending)
            generation = commits / f"{int(newest.name) + 1 if newest else 0:06d}"
            os.rename(pending, generation)
        except OSError as e:
            _remove_tree(pending)
            needed = sum(len(b) for b in files.values() if b)
            raise _cannot_write(self.path, e, "save", needed=needed) from None
        try:
            fsync_dir(commits)
            self._publish(generation)
        except OSError as e:
            raise _cannot_write(self.path, e, "publish the newest files of") from None

    def rollback(self, generation: Path) -> None:
        """Make `generation` the newest again (drop the ones after it) and publish it."""
        for gen in self.generations():
            if gen == generation:
                break
            _remove_tree(gen)
        fsync_dir(self.path / COMMITS)
        self._publish(generation)

    def recover(self) -> list[str]:
        """Finish or discard whatever a crash interrupted; publish the newest generation. Returns
        the top-level files that had been replaced by hand (an editor saves a new file) and are
        now the committed version again: the caller says so."""
        commits = self.path / COMMITS
        _remove_tree(commits / PENDING)
        for stray in self.path.glob(".*.tmp"):  # temporary files of publish() and files.write_atomic()
            remove_quietly(stray)
        if _newest(commits) is None and _plain_run(self.path):
            self._adopt_plain_files()
        newest = _newest(commits)
        if newest is None:
            return []
        replaced = [name for name in FILES if (self.path / name).is_file() and (newest / name).is_file()
                    and not self._committed(self.path / name)]
        self._publish(newest)
        return replaced

    def _committed(self, path: Path) -> bool:
        """Whether a top-level file is one of a generation's (a crash in the middle of publishing
        leaves some files of the generation before the newest: those are not edits)."""
        versions = [gen / path.name for gen in self.generations() if (gen / path.name).is_file()]
        if any(_same_file(path, v) for v in versions):
            return True
        data = path.read_bytes()  # where hard links are copies
        return any(v.read_bytes() == data for v in versions)

    def _publish(self, generation: Path) -> None:
        for name in FILES:
            src, dst = generation / name, self.path / name
            if src.is_file():
                if dst.is_file() and os.path.samefile(src, dst):
                    continue
                tmp = temp_name(dst)
                _link_or_copy(src, tmp)
                os.replace(tmp, dst)
            elif dst.exists():
                os.unlink(dst)
        fsync_dir(self.path)
        self._prune()

    def _prune(self) -> None:
        """Keep the newest generation and the newest one before it with other weights (commits
        of a config change or of test metrics share the weights' file): the state to fall back on."""
        newest, *older = self.generations()
        keep = None
        for gen in older:
            if not _same_file(gen / "last.safetensors", newest / "last.safetensors"):
                keep = gen
                break
        for gen in older:
            if gen != keep:
                _remove_tree(gen)

    def _adopt_plain_files(self) -> None:
        """A run written before generations existed (files at the top only): commit them as they are."""
        (self.path / COMMITS).mkdir(exist_ok=True)
        self.commit({name: (self.path / name).read_bytes() for name in FILES if (self.path / name).is_file()})


# ---------------------------------------------------------------------- helpers
def _generations(commits: Path) -> list[Path]:
    try:
        return [p for p in commits.iterdir() if p.name.isdigit() and p.is_dir()]
    except OSError:
        return []


def _newest(commits: Path) -> Path | None:
    gens = _generations(commits)
    return max(gens) if gens else None


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _remove_abandoned_staging(path: Path) -> None:
    """Delete what creations of `path` that were killed before their rename left beside it.

    The staging folder's name holds the host and pid of its creator; only this host's can be
    judged, and only those whose process is gone are removed."""
    for staging in path.parent.glob(f".{path.name}.new-*"):
        host, _, pid = staging.name[len(path.name) + 6:].rpartition("-")[0].rpartition("-")
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        create_file(dst, src.read_bytes())


def _lock(path: Path, claim: bool = True) -> int:
    """Take the run's lock (exclusive flock; step 1 of the protocol in the module's docstring)
    and, if `claim`, write who holds it; UsageError if held."""
    for _ in range(_LOCK_ATTEMPTS - 1):
        fd = _lock_once(path, claim)
        if fd is not None:
            return fd
    return _lock_once(path, claim, check=False)


# A releaser removes .lock once per run, so a second attempt nearly always succeeds. The bound is for
# a filesystem whose fstat and stat never agree on a file (old overlayfs): the last try trusts the flock.
_LOCK_ATTEMPTS = 20


def _lock_once(path: Path, claim: bool, check: bool = True) -> int | None:
    """One try of `_lock`: the fd, or None if a releaser removed the file between open and flock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if check and not _is_file_at(fd, path):
            os.close(fd)
            return None
        if claim:
            me = f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(['mlp-cli', *sys.argv[1:]])}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
    except BlockingIOError:
        who = _describe_holder(fd)
        os.close(fd)
        raise UsageError(f"{path.parent} is in use by another mlp-cli process ({who}); wait for it to finish "
                         "or stop it, then try again") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one at `path` (not one unlinked since it was opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _unlink_lock(path: Path, fd: int) -> None:
    """Remove the lock file `fd` (locked by us) from `path`, unless it is no longer there
    (the run folder removed, or renamed from its staging name: then `path` is not ours)."""
    if _is_file_at(fd, path):
        remove_quietly(path)


def _describe_holder(fd: int) -> str:
    # The holder writes its pid right after taking the lock: wait a moment if we came in between.
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "pid unknown"


def check_creatable(path) -> None:
    """The cheap checks of `RunDir.create`, for before any data is read: UsageError if `path` is a
    file, holds a run or holds anything else, SaveError if no folder can be made there (a file or
    a read-only folder on the way). Writes nothing."""
    path = Path(path)
    _refuse_existing(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise _cannot_write(path, OSError(errno.ENOTDIR, "not a folder"), "create the run directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise _cannot_write(path, OSError(errno.EACCES, "permission denied"), "create the run directory")


def _refuse_existing(path: Path) -> None:
    """UsageError unless `path` is free or an empty folder: a file, a run (naming the process
    when one is writing it) and a folder holding anything else are refused. Leaves no file."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder; choose another --out")
    if has_run(path):
        fd = _lock(path / LOCK, claim=False)  # raises, naming the holder, if the run is in use
        try:
            _unlink_lock(path / LOCK, fd)
        finally:
            os.close(fd)
        raise UsageError(f"{path} already holds a run; continue it with: mlp-cli train --resume {path} "
                         "(or choose another --out)")
    entries = _entries(path)
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise UsageError(f"{path} is a folder that holds other files ({shown}), not a run; a run goes into a new "
                         "or empty folder, so that its files never mix with yours: choose another --out "
                         "(a folder that does not exist yet is created)")


def _entries(path: Path) -> list[str]:
    """The names in the folder `path` (folders with a slash), sorted; [] if there is no folder."""
    try:
        return sorted(e.name + "/" * e.is_dir() for e in os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _cannot_write(path: Path, e: OSError, action: str, needed: int | None = None) -> SaveError:
    """One line for an OS error while writing `path`: what failed, why, and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(path if path.exists() else path.parent)
            free = f"{st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        need = f", about {needed / 1e6:.1f} MB needed" if needed else ""
        why = f"no space left on the device ({free}{need}); free some space"
    elif e.errno == errno.EROFS:
        why = "the filesystem is read-only; choose a writable folder"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied; choose a folder you can write to"
    elif e.errno == errno.ENOTDIR:
        why = "a part of the path is a file, not a folder; choose another folder"
    elif e.errno == errno.ENOENT:
        why = "no folder can be created there; choose another folder"
    else:
        why = f"{e.strerror or e}; choose another folder"
    return SaveError(f"cannot {action} {path}: {why}")
