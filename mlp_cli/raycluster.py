"""Starting or joining Ray for a sweep, quietly, and failing with one clear line.

Without an address, `ray.init()` starts a Ray instance inside this process's session (about
4 s here) and `ray.shutdown()` stops it; nothing for the user to start. With `--address auto`
or `HOST:PORT` we join a running cluster (`ray start --head`), which needs three things that
Ray leaves to its user:

- Token authentication. Ray (2.59+) turns it on for a cluster started on a machine that holds
  a token (~/.ray/auth_token, which any local `ray.init()` creates), but a client given an
  explicit HOST:PORT only sends the token when RAY_AUTH_MODE=token is set: otherwise it retries
  "InvalidAuthToken" for 20-40 s and fails. A client that sends a token to a cluster without
  authentication is accepted, so we set RAY_AUTH_MODE=token whenever a token is available.
- A bounded wait. An address where nothing listens makes `ray.init` retry for about two
  minutes, printing from C++ straight to the terminal. We first try a plain TCP connection
  (5 s), then connect once in a child process that we can stop after PROBE_SECONDS and whose
  output we read to name the cause.
- Silence. Ray logs to the terminal at INFO level; unless --verbose it logs only what is
  critical, and workers' output stays in Ray's log files (/tmp/ray/session_latest/logs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlp_cli.config import ConfigError
from mlp_cli.errors import RuntimeFailure

PROBE_SECONDS = 20
_PROBE = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print("CPUS", int(ray.cluster_resources().get("CPU", 0)), len(ray.nodes()), flush=True)
"""


def token_available() -> bool:
    """Whether this machine has a Ray auth token where Ray looks for one."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def _token_help(address: str) -> str:
    where = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else \
        os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    if token_available():
        return (f"the Ray cluster at {address} rejected this machine's auth token ({where}); copy the cluster's "
                "token (`ray get-auth-token` on its head node) into ~/.ray/auth_token here, or set RAY_AUTH_TOKEN")
    return (f"the Ray cluster at {address} requires token authentication and this machine has no token; copy "
            "the cluster's token (`ray get-auth-token` on its head node) into ~/.ray/auth_token here, "
            "or set RAY_AUTH_TOKEN")


def check_reachable(address: str) -> None:
    """HOST:PORT must accept a TCP connection within 5 s ('auto' is found by Ray itself)."""
    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address}: give auto or HOST:PORT of a Ray head node (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise RuntimeFailure(f"cannot reach a Ray cluster at {address} ({reason}); start one there with "
                             "`ray start --head`, or check the host, the port (default 6379) and the firewall") from None


def probe(address: str) -> str:
    """Connect once in a child process, within PROBE_SECONDS: the cluster's CPUs and nodes, or a
    RuntimeFailure that names the cause."""
    check_reachable(address)
    child = subprocess.Popen([sys.executable, "-c", _PROBE, address], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, deadline, timed_out = b"", time.monotonic() + PROBE_SECONDS, False
    try:
        while time.monotonic() < deadline:
            if select.select([child.stdout], [], [], 0.2)[0]:
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:  # the child closed its output: it is done
                    break
                output += chunk
            if b"InvalidAuthToken" in output:
                raise RuntimeFailure(_token_help(address))
        else:
            timed_out = True
    finally:
        if timed_out or child.poll() is None:
            child.kill()
        child.wait()
    lines = output.decode(errors="replace").splitlines()
    found = [line.split() for line in lines if line.startswith("CPUS ")]
    if child.returncode == 0 and found:
        return f"Ray cluster at {address} ({found[0][2]} node{'s' * (found[0][2] != '1')}, {found[0][1]} CPUs)"
    if any("Could not find any running Ray instance" in line for line in lines):
        raise RuntimeFailure("--address auto: no Ray cluster is running on this machine; start one with "
                             "`ray start --head`, or give --address HOST:PORT")
    if timed_out:
        raise RuntimeFailure(f"no Ray cluster answered at {address} within {PROBE_SECONDS} s; check that it is "
                             "the address `ray start --head` printed (port 6379 by default)")
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    raise RuntimeFailure(f"cannot connect to the Ray cluster at {address}: {last.strip()}")


@contextlib.contextmanager
def connected(address: str | None, *, verbose: bool = False):
    """Ray started (no address) or joined (auto, HOST:PORT) for the block, then shut down.
    Yields a description of where the trials run."""
    if address and "RAY_AUTH_MODE" not in os.environ and token_available():
        # For the probe and for ray.init alike, and before Ray is imported: its C++ side reads
        # the mode once, and a local cluster then fails to start if it changed in between.
        os.environ["RAY_AUTH_MODE"] = "token"
    where = probe(address) if address else None
    if not address:
        # Ray's memory monitor kills workers when the machine as a whole runs short, even when
        # other programs hold the memory; on a shared machine that killed trials for nothing.
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    import ray

    level = logging.INFO if verbose else logging.CRITICAL
    try:
        try:
            if address:
                ray.init(address=address, log_to_driver=verbose, logging_level=level)
            else:
                ray.init(include_dashboard=False, log_to_driver=verbose, logging_level=level)
                where = f"a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        except (RuntimeError, ConnectionError, OSError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RuntimeFailure(f"could not {'join' if address else 'start'} Ray: {reason} "
                                 "(Ray's logs: /tmp/ray/session_latest/logs)") from None
        yield where
    finally:
        ray.shutdown()
