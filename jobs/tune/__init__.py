"""`raycut tune`: the search driver (driver.py: Ray Tune + ASHA, each trial a Ray Train
run, MLflow parent/child runs, results, the champion), its search space (space.py) and
its one progress line for every trial (progress.py)."""
