"""`mlp-cli sweep`: many runs of one config with some keys varied, in parallel, on Ray Tune.

What is Tune's and what is ours. Tune schedules the trials (as many at a time as the CPUs
allow, each asking for its thread count in CPUs), restarts a trial whose worker process died,
and with --early-stop lets ASHA stop the trials that trail. Everything a user keeps is ours:
a trial is exactly `train.fit` into DIR/<trial name>/, a crash-safe run directory that resumes
from its last committed epoch. So Tune gets no checkpoints (the run directory is the
checkpoint, on storage every node shares, and a restarted trial simply resumes it), and Tune's
own experiment state, which is pickles, lives in a temporary folder and is deleted.

The sweep folder:
  sweep.yaml   what was asked (config, overrides, axes or distributions, metric) and the
               resulting trials (name and KEY=VALUE overrides each), with the config they
               share, so --resume never depends on the config file again;
  results.csv  one row per trial, rewritten atomically whenever a trial changes state; its
               status (pending, running, done, stopped, failed, lost, interrupted) is what
               --resume trusts: done, stopped and failed trials are not run again;
  sweep.png    the validation curves, and the metric against each varied key.

Random search draws its values here (seeded, with NumPy) rather than in Tune, so that every
trial's config exists and is validated before anything starts, and --resume runs exactly the
same trials. Ray is imported only by the functions that run trials: parsing, validation and
the files need neither Ray nor a network.

The package, along its seams:
  plan.py    the request: the command line and the sweep file parsed and checked, the trials
             expanded (grid or random draws), and every trial's config validated, once;
  folder.py  the sweep folder's state on disk (sweep.yaml, results.csv, sweep.png, TensorBoard's
             HParams experiment), the best trial and the summary;
  tune.py    running the trials on Ray Tune: one `train.fit` per trial, the signals, the console.
"""

from mlp_cli.sweep.folder import (PLOT_FILE, RESULTS_FILE, SWEEP_FILE, best_trial, read_plan, read_statuses, result_row,
                                  summary, write_plan, write_results)
from mlp_cli.sweep.plan import (DISTRIBUTIONS, METRICS, Plan, Trial, grid_trials, make_plan, parse_arguments,
                                random_trials, read_sweep_file, scalar, split_values, trial_configs, trial_names,
                                trial_threads)
from mlp_cli.sweep.tune import FINAL, INSTALL_HINT, MAX_FAILURES, ray_installed, run, run_trial

__all__ = ["DISTRIBUTIONS", "FINAL", "INSTALL_HINT", "MAX_FAILURES", "METRICS", "PLOT_FILE", "Plan", "RESULTS_FILE",
           "SWEEP_FILE", "Trial", "best_trial", "grid_trials", "make_plan", "parse_arguments", "random_trials",
           "ray_installed", "read_plan", "read_statuses", "read_sweep_file", "result_row", "run", "run_trial",
           "scalar", "split_values", "summary", "trial_configs", "trial_names", "trial_threads", "write_plan",
           "write_results"]
