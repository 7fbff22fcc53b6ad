"""What the machine allows: memory and writable paths, checked before the work starts.

A network too big for memory, or a picture whose folder does not exist, should fail at once with
one line saying so, not with a NumPy allocation error or an OS error after the work is done (or
with the kernel killing the process). No dependencies beyond the standard library.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mlp_cli.errors import UsageError


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def check_memory(needed: int, what: str, fix: str) -> None:
    """UsageError (exit 2) when `needed` bytes exceed the memory available: "`what` needs at least ..."."""
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(f"{what} needs at least {gib(needed)} ({needed:,} bytes) of memory but {gib(available)} "
                         f"is available; {fix}")


def check_writable(path, option: str) -> Path:
    """Check, before any work, that the file `path` can be created or replaced: its folder exists and
    takes a new file (tried for real: permission bits say nothing for root or on read-only mounts).
    UsageError naming `option` (e.g. "--plot") otherwise."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name inside it")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"{option} {path}: {folder} {what}; create the folder or choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write in {folder} ({e.strerror or e}); choose another path") from None
    return path
