"""`raycut train`: the driver (driver.py: resolve, track, fit, register), the loop each
Ray Train worker runs (worker.py), the run's spec as it travels to the workers and into
run.json (spec.py), evaluation during training (evaluation.py), Ctrl-C as a checkpoint
and a stop (interrupt.py), and training in one process without Ray (in_process.py:
tests and quick experiments)."""
