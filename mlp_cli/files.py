"""Writing files so that a crash never leaves half of one: temporary name, fsync, rename.

A reader sees either the old file or the new one, never a mixture, and after a power cut the
renamed file holds its data (SQLite's rule: fsync the file before the rename, and the folder
after it, or the rename may reach the disk before the bytes do). Files get the permissions
the umask gives (0666 & ~umask), as with any other tool: `tempfile.mkstemp` would make every
file 0600 and keep teammates out of runs on shared storage.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def create_file(path, data: bytes) -> None:
    """Write `data` to a new file `path` (fails if it exists) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make the entries of a folder (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path) -> Path:
    """A hidden name beside `path` for its next version (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(path, data) -> Path:
    """Replace `path` with `data` atomically; `data` is bytes, str, or a function that writes a
    file at the temporary path it is given (e.g. matplotlib's savefig)."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        if callable(data):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            data(str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            create_file(tmp, data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)
    return path


def remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
