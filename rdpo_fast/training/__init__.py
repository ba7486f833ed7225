"""The training loop (loop.py: setup, step, evaluate, checkpoint, finish) and its parts: what one forward
computes (forward.py), the process group and DDP/FSDP2 (dist.py), the cached reference pass
(ref_cache.py), settings (config.py, flags.py, trl_names.py, typed.py), precision, optimizer and schedule
(optim.py), checkpoints and the run directory (checkpoint.py, run_dir.py, fault_points.py), metrics
(reporting.py, plot.py)."""
