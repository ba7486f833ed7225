"""The training loop (loop.py) and its plumbing: settings (config.py, flags.py, trl_names.py, typed.py),
precision and the optimizer (optim.py), checkpoints and the run directory (checkpoint.py, run_dir.py,
fault_points.py), metrics (reporting.py, plot.py)."""
