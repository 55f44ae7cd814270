"""`raycut translate`: the driver (driver.py: inputs, what is done, int8 calibration,
the staged Ray Data job, the manifest, labels). The stages themselves are in
pipelines.translate_io (decode, encode + write: CPU, no torch) and
pipelines.translate (G); the manifest in pipelines.manifest."""
