"""Training a config into a run directory.

    network.py   the config's network: shapes checked before any data is read, built from the seed
    runstate.py  what a run's state is, read back from its run directory; starting and resuming
    loop.py      `fit`, the one entry point, and the epoch skeleton: train -> evaluate -> decide
                 -> commit -> report
    steps.py     the decisions: divergence, early stopping, the moving average (the best epoch:
                 selection.py)
"""

from mlp_cli.console import Console
from mlp_cli.errors import Interrupted
from mlp_cli.train.loop import COMMIT_INTERVAL, RunResult, fit
from mlp_cli.train.network import NUM_CLASSES, build_network, check_network, check_outputs
from mlp_cli.train.runstate import METRIC_COLUMNS, State, metrics_csv, read_state

__all__ = ["COMMIT_INTERVAL", "Console", "Interrupted", "METRIC_COLUMNS", "NUM_CLASSES", "RunResult", "State",
           "build_network", "check_network", "check_outputs", "fit", "metrics_csv",
           "read_state"]
