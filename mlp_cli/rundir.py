"""The run directory: what `mlp-cli train` leaves in a folder and how to tell a resumable one.

Minimal stand-in for the crash-safe run directory (issue 10), which owns the layout, the
atomic commit per epoch, recovery and the lock; the sweep only asks `has_run`.
"""

from __future__ import annotations

from pathlib import Path


def has_run(path) -> bool:
    """True when `path` holds a run that `train.fit(..., resume=True)` can continue."""
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / "last.safetensors").is_file()
