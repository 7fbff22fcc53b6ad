"""Stress the run directory: SIGKILL `mlp-cli train` / `--resume` at random instants, resume until
done, and compare the final files with those of an uninterrupted run.

    python scripts/kill_resume.py --kills 100 [--config configs/circles_mlp.yaml] [KEY=VALUE ...]

Each kill lands at a uniformly random instant of a process's life (start-up, data loading,
training, commits, test evaluation, pictures). After `--kills` kills the last resume runs to the
end. Compared: metrics.csv without its wall-clock `seconds` column, last.safetensors,
last.optim.safetensors and best.safetensors byte for byte, and the test accuracy. Not part of
the test suite (tests/test_crash_safety.py kills at every write point instead); it takes minutes.
"""

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]


def final(run: Path) -> dict:
    return {"metrics": [line.rsplit(",", 1)[0] for line in (run / "metrics.csv").read_text().splitlines()],
            **{name: (run / name).read_bytes() for name in ("last.safetensors", "last.optim.safetensors",
                                                            "best.safetensors")},
            "test_accuracy": json.loads((run / "test_metrics.json").read_text())["accuracy"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/circles_mlp.yaml")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", default=["train.epochs=1500"])
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    straight, killed = work / "straight", work / "killed"
    started = time.time()
    subprocess.run([*MLP_CLI, "train", "--config", args.config, "--out", str(straight), "--quiet", *args.overrides],
                   check=True)
    lifetime = time.time() - started
    print(f"uninterrupted run: {lifetime:.1f} s", flush=True)
    kills, finished, mismatches = 0, 0, 0
    while True:
        cmd = (["--resume", str(killed)] if killed.exists()
               else ["--config", args.config, "--out", str(killed), *args.overrides])
        proc = subprocess.Popen([*MLP_CLI, "train", "--quiet", *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(0, lifetime) if kills < args.kills else None)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        err = proc.stderr.read()
        if proc.returncode != 0:
            print(f"exit {proc.returncode} after {kills} kills: {err.strip()}", flush=True)
            sys.exit(1)
        # The run finished: it must equal the uninterrupted one, whatever it went through.
        finished += 1
        mismatches += final(straight) != final(killed)
        shutil.rmtree(killed)
        if kills >= args.kills:
            break
    print(f"{kills} SIGKILLs over {finished} runs resumed to completion; "
          f"runs whose final files differ from the uninterrupted run: {mismatches}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
